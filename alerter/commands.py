"""What each command does, in terms of the composition root; cli.py only parses."""

from __future__ import annotations

import argparse

from alerter.errors import AlerterError


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "sim":
        from alerter import sim

        sim.serve(
            host=args.host,
            port=args.port,
            meters=args.meters,
            action_rate=args.action_rate,
            seed=args.seed,
            api_key=args.api_key,
        )
        return 0
    raise AlerterError(f"command not available yet: {args.command}")
