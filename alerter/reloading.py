"""Reading the config and rules files again, all or nothing, for SIGHUP and the file watcher.

How this works: `reread` fingerprints (sha256, mtime, size) the files the running config
was read from, loads the config (and the rules files it names) with the same loader as at
start, then fingerprints every file it read once more. A file that changed in between was
being written (the loader may have read it half-written or empty): the result
is `unstable` and nothing is applied (the watcher tries again once the file has read the
same on two of its ticks). Otherwise the result is `ok` with the new Config, or `rejected`
with every problem as `FILE:LINE:COL: message` (the loader refuses an empty rules file and
rules without any rule or receiver, which would drop every event).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alerter.config import Config, load_config
from alerter.errors import ConfigError

ReloadResult = Literal["ok", "rejected", "unstable"]
UNSTABLE = "a rules or config file changed while it was read; trying again once it settles"


@dataclass(frozen=True)
class Reread:
    result: ReloadResult
    config: Config | None = None
    """The new config when `ok`."""
    problems: list[str] = field(default_factory=list)
    digests: dict[Path, str | None] = field(default_factory=dict)
    """What was read (see `file_digests`)."""


def rule_files(config: Config) -> list[Path]:
    """The config file and the rules files it names: what a reload reads."""
    return [*([config.path] if config.path else []), *config.rule_paths]


def file_digests(paths: Iterable[Path]) -> dict[Path, str | None]:
    """Each file's sha256, modification time and size (None: unreadable). The time catches a
    file rewritten with the same bytes while it was read (the reader may have seen it empty)."""
    out: dict[Path, str | None] = {}
    for p in paths:
        try:
            with p.open("rb") as f:
                st = os.fstat(f.fileno())
                digest = hashlib.sha256(f.read()).hexdigest()
            out[p] = f"{digest}:{st.st_mtime_ns}:{st.st_size}"
        except OSError:
            out[p] = None
    return out


def reread(current: Config) -> Reread:
    """Load `current`'s config file again (see the module docstring)."""
    if current.path is None:
        return Reread("rejected", problems=["this config was not loaded from a file"])
    before = file_digests(rule_files(current))
    fresh: Config | None = None
    problems: list[str] = []
    try:
        fresh = load_config(current.path)
    except ConfigError as err:
        problems = err.problems
    except Exception as err:  # whatever it is, the running config stays and says so
        problems = [f"{current.path}: cannot be loaded ({type(err).__name__})"]
    after = file_digests(dict.fromkeys([*before, *(rule_files(fresh) if fresh else ())]))
    if any(after[p] != digest for p, digest in before.items()):
        return Reread("unstable", problems=[UNSTABLE])
    if fresh is None:
        return Reread("rejected", problems=problems, digests=after)
    return Reread("ok", fresh, digests=after)


_LIVE = {"source": {"webhooks"}, "poll": {"initial_sync"}, "state": {"retention"}, "http": {"auth"}, "log": set()}
"""Per section of the config, the settings a reload applies (the rest need a restart); the
push endpoint's `secrets` and `header` apply too, its `path` and `listen` do not."""


def needs_restart(running: Config, fresh: Config) -> list[str]:
    """The settings `fresh` changes from `running` (the config the process started with) that a
    reload does not apply: their names, never their values (a key or a password may be one)."""
    changed: list[str] = []
    for section, live in _LIVE.items():
        old, new = getattr(running, section), getattr(fresh, section)
        changed += [
            f"{section}.{name}"
            for name in type(old).model_fields
            if name not in live and getattr(old, name) != getattr(new, name)
        ]
    hooks, fresh_hooks = running.source.webhooks, fresh.source.webhooks
    if (hooks is None) != (fresh_hooks is None):
        changed.append("source.webhooks")
    elif hooks is not None and fresh_hooks is not None:
        changed += [f"source.webhooks.{n}" for n in ("path", "listen") if getattr(hooks, n) != getattr(fresh_hooks, n)]
    return changed
