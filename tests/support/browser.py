"""Debian's chromium driven by Playwright (never a browser Playwright downloads itself)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, async_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile in `profile`; skips (saying why) where chromium is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: scripts/ensure-chromium.sh installs it (make test runs it)")
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 860},
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            await context.close()
