"""The state store: `open_store(url)` picks the backend by the URL's scheme."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from alerter.errors import StoreError
from alerter.store.base import Store


def open_store(url: str, *, shared: bool = False) -> Store:
    """A Store for `url`, not yet opened: call `await store.open()`.

    `sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite://:memory:` (tests),
    `postgresql://user:password@host:port/db` (or `postgres://`), optionally `?schema=NAME`
    to keep one deployment's tables in their own schema. `shared=True` opens it beside a
    running service, for short CLI commands: SQLite without the single-instance lock, and
    neither backend upgrades a state's schema then (`SqlStore._migrate`).
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower() if sep else "(none)"
    if scheme == "sqlite":
        from alerter.store.sqlite import SqliteStore

        return SqliteStore(url, shared=shared)
    if scheme in ("postgresql", "postgres"):
        from alerter.store.postgres import PostgresStore

        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = next((v for k, v in query if k == "schema"), None)
        rest = urlencode([(k, v) for k, v in query if k != "schema"])
        return PostgresStore(urlunsplit(parts._replace(query=rest)), schema=schema or None, shared=shared)
    raise StoreError(f"unsupported state url scheme {scheme!r}: use sqlite:///path/to/file.db or postgresql://host/db")
