"""Process-wide speed settings, applied by the entry points (`alerter run`, `alerter once`), not by behaviour.

How this works: a sweep decodes and frees millions of small objects that never form
reference cycles; with the default thresholds the cycle collector runs every 700
allocations and repeatedly walks everything loaded at start. `tune_process`, called once the
modules and config are loaded, freezes what exists then (moving it out of the collector's
way) and raises the first threshold so collections are rarer; cycles are still collected.

It also shortens the interpreter's switch interval. The SQLite store's connection thread gives
up the GIL for every statement it runs (and zstd for every batch it packs); taking it back, it
waits until the main thread, busy decoding and diffing pages, is asked to let go, which the
default interval (5 ms) makes a few milliseconds per statement. `python -m bench.bench_insert`
measures a thread's multi-row inserts beside a busy main thread at both intervals.
"""

from __future__ import annotations

import gc
import sys

GC_THRESHOLD = (50_000, 20, 100)
SWITCH_INTERVAL = 0.001
"""Seconds a thread runs Python code before another thread waiting for the GIL gets it."""


def tune_process() -> None:
    """For a long-running process, once its modules and config are loaded."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    sys.setswitchinterval(SWITCH_INTERVAL)
