"""alerter: tells the right people when a Leap meter needs the partner to act."""

__version__ = "0.1.0"
