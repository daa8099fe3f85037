"""The error hierarchy: every error a user can cause is an AlerterError with one clear line."""

from __future__ import annotations

from collections.abc import Mapping


class AlerterError(Exception):
    """Base class; `str(err)` is one line fit for stderr and never carries a secret."""


class ConfigError(AlerterError):
    """A config or rules file is invalid; `problems` holds one `FILE:LINE:COL: message` each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SourceError(AlerterError):
    """The Leap API could not be read. `auth` is True when the key was refused."""

    def __init__(self, message: str, *, auth: bool = False, status: int | None = None) -> None:
        self.auth = auth
        self.status = status
        super().__init__(message)


class StoreError(AlerterError):
    """The state store cannot be used (locked by another instance, unreachable, bad schema)."""


class NoStateError(StoreError):
    """A state command's `state.url` names no state (a mistyped path, most often): the config is
    wrong, and the command exits as for one (2)."""


class FencedError(StoreError):
    """This instance lost leadership: a newer fencing token owns the state."""


class DeliveryError(AlerterError):
    """A notification could not be delivered; `retryable` says whether to try again."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        threads: Mapping[str, str] | None = None,
    ) -> None:
        self.retryable = retryable
        self.retry_after = retry_after
        self.threads: Mapping[str, str] = threads or {}
        """Thread roots some recipients have though the notification failed (a mail taken by
        some addresses): obligation key id -> external id, kept for the replies that follow."""
        super().__init__(message)
