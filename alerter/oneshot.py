"""`alerter once`: one cycle, then deliver what it produced, with one line per failure."""

from __future__ import annotations

import asyncio
import sys

from alerter import logs
from alerter.config import Config, load_config
from alerter.errors import SourceError
from alerter.service import Service
from alerter.tuning import tune_process


def once(config_path: str, *, deadline: float, verbose: bool = False) -> int:
    """One cycle, then deliver what it produced. 0 all delivered; 1 a failure; 2 bad config."""
    config = load_config(config_path)
    # a failed cycle is the one line _once prints: the service's own lines about it would repeat it
    failed = ("cycle_failed", "self_alert:auth_refused", "self_alert:source_down", "self_alert:stale")
    reported = () if verbose else failed
    logs.configure(config.log.format, "debug" if verbose else config.log.level, reported=reported)
    tune_process()
    return asyncio.run(_once(config, deadline))


async def _once(config: Config, deadline: float) -> int:
    service = Service(config)
    await service.start()
    try:
        try:
            if await service.run_cycle(flush_all=True) is None:
                print("alerter: another instance holds the polling lease; this run only delivers", file=sys.stderr)
        except SourceError as err:
            print(f"alerter: {err}", file=sys.stderr)
            await service.drain(min(deadline, 5.0))
            return 1
        stats = await service.drain(deadline)
        if stats.undelivered:
            print(
                f"alerter: {stats.undelivered} notification(s) still undelivered; they stay queued",
                file=sys.stderr,
            )
            return 1
        if sum(stats.dead.values()):
            print(
                f"alerter: {sum(stats.dead.values())} notification(s) failed permanently (see `alerter dlq list`)",
                file=sys.stderr,
            )
            return 1
        return 0
    finally:
        await service.close()
