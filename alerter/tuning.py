"""Process-wide speed settings, applied by the entry points (`alerter run`, `alerter once`), not by behaviour.

How this works: a sweep decodes and frees millions of small objects that never form
reference cycles; with the default thresholds the cycle collector runs every 700
allocations and repeatedly walks everything loaded at start. `tune_gc`, called once the
modules and config are loaded, freezes what exists then (moving it out of the collector's
way) and raises the first threshold so collections are rarer; cycles are still collected.
"""

from __future__ import annotations

import gc

GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """For a long-running process, once its modules and config are loaded."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
