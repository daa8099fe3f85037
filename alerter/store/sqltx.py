"""What both SQL backends supply to the SQL store's parts: a transaction and how values are bound.

The parts of the SQL store (one per concern: `sqlobligations`, `sqlrouting`, `sqlsilences`,
`sqlledger`) write their queries once, against these hooks; `SqlStore` composes them and each
backend (`SqliteStore`, `PostgresStore`) implements the hooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, ClassVar, Protocol

from alerter.models import Event
from alerter.store.rows import Row
from alerter.store.schema import Dialect


class Tx(Protocol):
    """One connection inside a transaction (or a read)."""

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Returns the number of rows affected."""

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None: ...


class SqlHooks(ABC):
    """The backend hooks every part of the SQL store queries through."""

    dialect: ClassVar[Dialect]

    def _payload(self, text: bytes, event: Event) -> Any:
        """How an event's payload (its JSON) is stored: as text (SQLite packs it, `packing`)."""
        return text.decode()

    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Tx]: ...

    @abstractmethod
    def _write(self, fenced: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A transaction; `fenced` checks the fencing token inside it (FencedError)."""

    @abstractmethod
    def _ts(self, dt: datetime | None) -> Any: ...

    @abstractmethod
    def _in(self, n: int) -> str:
        """SQL for "is one of the ids bound as parameter n", e.g. `= ANY($1::text[])`."""

    @abstractmethod
    def _ids(self, values: Sequence[str]) -> Any:
        """Bind a list of ids for `_in`."""
