"""`python -m alerter` runs the command line."""

from alerter.cli import main

raise SystemExit(main())
