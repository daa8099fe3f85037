"""A stop asked for while `alerter run` starts (imports, config), before the service's own
signal handlers are in place: noted rather than fatal (SIGTERM's default action ends the process
with no word), and honoured once they are (`Runtime.run`)."""

from __future__ import annotations

import signal
from types import FrameType

_asked: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _asked.append(signum)


def note_stops() -> None:
    """From now until the service's handlers replace it, a SIGTERM is noted (`asked`)."""
    signal.signal(signal.SIGTERM, _note)


def asked() -> bool:
    """Whether a stop was asked for before the service's handlers were in place."""
    return bool(_asked)
