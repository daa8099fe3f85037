"""structlog setup: JSON lines (or console) on stderr, snake_case events, secrets never logged.

How this works: structlog's own events and the standard-library records of the libraries
underneath (apscheduler, asyncpg, aiohttp, aiosqlite, asyncio, warnings) go through one
stdlib handler whose structlog ProcessorFormatter renders each as a single line with
`event`, `level`, `logger` and `timestamp`; a traceback becomes the `exception` field of
that line. In JSON mode, exceptions that Python would print raw (an unhandled error in a
thread, an "exception ignored" at garbage collection) are logged the same way.
Libraries log at INFO and up (WARNING for APScheduler, whose INFO is per-run chatter), even
with `--verbose`; APScheduler's "skipped: maximum number of running instances" notes (a job
still busy when its next run came: by design here) are dropped.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Collection
from typing import Any

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_QUIET_LIBRARIES = ("apscheduler",)
_state = {"json": False}


def json_mode() -> bool:
    """Whether the last `configure` asked for JSON lines."""
    return _state["json"]


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler `configure` installs on the root logger (replaced, never stacked)."""


class _ExpectedSkips(logging.Filter):
    """Drops APScheduler's note that a job was still running at its next run time (by design)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in str(record.msg)


def _drop(events: Collection[str]) -> Processor:
    def drop(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event = event_dict.get("event")
        if event in events or f"{event}:{event_dict.get('alert')}" in events:
            raise structlog.DropEvent
        return event_dict

    return drop


def configure(fmt: str = "json", level: str = "info", *, reported: Collection[str] = ()) -> None:
    """Route structlog and stdlib logging to stderr as `fmt` lines at `level`.

    `reported`: events the calling command reports itself on stderr (`cycle_failed`, or
    `self_alert:auth_refused` for one alert); their log lines would say it again, so they
    are dropped.
    """
    threshold = _LEVELS.get(level, logging.INFO)
    json = fmt == "json"
    _state["json"] = json
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json  # tracebacks without the frames' local values, where a secret may be held
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            *([_drop(reported)] if reported else []),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([structlog.processors.format_exc_info] if json else []),
            renderer,
        ],
    )
    handler = _Handler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # the libraries' debug lines (aiosqlite: two per statement) would drown ours
    root.setLevel(max(threshold, logging.INFO))
    logging.getLogger("alerter").setLevel(threshold)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(threshold, logging.WARNING))
    scheduler = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, _ExpectedSkips) for f in scheduler.filters):
        scheduler.addFilter(_ExpectedSkips())
    logging.captureWarnings(True)
    if json:
        threading.excepthook = _thread_exception
        sys.unraisablehook = _unraisable


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    thread = args.thread.name if args.thread is not None else None
    structlog.get_logger("alerter.threads").error("thread_crashed", thread=thread, exc_info=exc_info)


def _unraisable(unraisable: Any) -> None:
    exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    where = unraisable.err_msg or "Exception ignored in"
    if unraisable.object is not None:
        where = f"{where}: {unraisable.object!r}"[:300]
    structlog.get_logger("alerter.unraisable").warning("exception_ignored", where=where, exc_info=exc_info)
