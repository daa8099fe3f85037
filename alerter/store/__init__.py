"""The state store: `open_store(url)` picks the backend by the URL's scheme."""

from __future__ import annotations

from alerter.errors import StoreError
from alerter.store.base import Store


def open_store(url: str) -> Store:
    """A Store for `url`, not yet opened: call `await store.open()`.

    `sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite://:memory:` (tests),
    `postgresql://user:password@host:port/db` (or `postgres://`).
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower() if sep else "(none)"
    if scheme == "sqlite":
        from alerter.store.sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("postgresql", "postgres"):
        from alerter.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"unsupported state url scheme {scheme!r}: use sqlite:///path/to/file.db or postgresql://host/db")
