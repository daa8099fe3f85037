"""Reading stored rows: the fast constructors give exactly what full validation gives, and a row
that cannot be read is skipped and named by the open-obligation walk (the reminders go on)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from alerter.models import Event, Notification
from alerter.store import rows
from alerter.store.sqlite import SqliteStore
from alerter.templates import sample_notifications
from tests.test_rules import NOW, make_event


def test_fast_reads_equal_validated_reads() -> None:
    for n in sample_notifications(NOW):
        payload = n.model_dump_json()
        assert rows.notification_from_payload(payload) == Notification.model_validate_json(payload)
        for e in n.events:
            raw = e.model_dump_json()
            assert rows.event_from_payload(raw) == Event.model_validate_json(raw)
    part = sample_notifications(NOW)[-1].model_copy(update={"part": (2, 3), "summary": {"total": 9}})
    assert rows.notification_from_payload(part.model_dump_json()) == part


def test_a_payload_of_another_shape_goes_through_validation_which_names_the_problem() -> None:
    raw = make_event().model_dump_json().replace('"occurred_at"', '"when"')
    with pytest.raises(ValidationError, match="occurred_at"):
        rows.event_from_payload(raw)


async def test_open_obligations_skip_an_unreadable_row_and_name_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        store.set_fence(1)
        good, bad = make_event(meter_id="M-1").obligation, make_event(meter_id="M-2").obligation
        await store.commit_page([good, bad], [])
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE obligations SET meter = '{\"nope\": 1}' WHERE meter_id = 'M-2'")
        got = await store.open_obligations()
        assert got == [good]
        [problem] = store.unreadable
        assert problem.startswith("M-2/") and "meter" in problem
        with sqlite3.connect(path) as raw:
            raw.row_factory = sqlite3.Row
            [row] = raw.execute(f"SELECT {rows.OBLIGATION_COLUMNS} FROM obligations WHERE meter_id = 'M-1'")
            assert rows.obligation_from_row(row) == rows.obligation_checked(row) == good
    finally:
        await store.close()
