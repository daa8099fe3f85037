"""A benchmark's state on PostgreSQL: a fresh schema of the server `make bench` starts."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg


@contextlib.asynccontextmanager
async def pg_schema(server: str, prefix: str) -> AsyncIterator[str]:
    """A state URL in a fresh schema of `server` (named `prefix_...`), dropped afterwards; ""
    without a server."""
    if not server:
        yield ""
        return
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        yield f"{server}?schema={schema}"
    finally:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
