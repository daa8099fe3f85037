"""Console: a readable multi-line summary of each notification on a stream, for the demo."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TextIO

from alerter.models import Notification
from alerter.notifiers.base import SendResult, Steps, ThreadLookup
from alerter.receivers import ConsoleConfig
from alerter.render.console import summary


class ConsoleNotifier:
    channel = "console"

    def __init__(self, receiver: str, config: ConsoleConfig | None = None, stream: TextIO | None = None) -> None:
        self.receiver = receiver
        self.config = config or ConsoleConfig()
        self._stream = stream

    async def send(
        self, notification: Notification, threads: ThreadLookup, now: datetime, steps: Steps | None = None
    ) -> SendResult:
        stream = self._stream or (sys.stderr if self.config.stream == "stderr" else sys.stdout)
        stream.write(summary(notification, now))
        stream.flush()
        return SendResult(external_id=notification.id)

    async def close(self) -> None:
        return None
