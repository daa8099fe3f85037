"""Retention on both stores: what is done with and old is forgotten; open obligations' events,
pending deliveries, dead letters and obligations themselves stay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from msgspec.structs import replace

from alerter.models import RoutingWrite
from tests.support.stores import BACKENDS, T0, event, notification, obligation, outbox, store_for

DAY = timedelta(days=1)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_purge_forgets_only_what_is_done_with(tmp_path: Path, backend: str) -> None:
    async with store_for(backend, tmp_path) as store:
        store.set_fence(await store.try_acquire_leadership("t"))
        gone = obligation("m1", "AUTH_1")
        gone_done = replace(gone, status="resolved", resolution="cleared", resolved_at=T0 + DAY, version=2)
        still_open = obligation("m2", "AUTH_2")
        dead = obligation("m3", "AUTH_3")
        dead_done = replace(dead, status="resolved", resolution="cleared", resolved_at=T0 + DAY, version=2)
        opened = [event(gone), event(still_open), event(dead)]
        resolved = [event(gone_done, "resolved", T0 + DAY), event(dead_done, "resolved", T0 + DAY)]
        await store.commit_page([gone_done, still_open, dead_done], [*opened, *resolved])
        await store.commit_routing(RoutingWrite(consumed=[e.id for e in [*opened, *resolved]]))
        await outbox(
            store,
            notification("n-gone", [opened[0], resolved[0]]),
            notification("n-open", [opened[1]]),
            notification("n-dead", [opened[2], resolved[1]]),
        )
        for nid in ("n-gone", "n-open"):
            await store.mark_sent(nid, "ops", T0, None)
        await store.mark_failed("n-dead", "ops", "410 Gone", None, T0)

        removed = await store.purge(T0 + 90 * DAY)

        assert removed["notifications"] == 1
        assert removed["events"] == 2  # the gone obligation's opened+resolved; the dead letter's stay with it
        assert [(d.notification.id, len(d.notification.events)) for d in await store.dead_letters()] == [("n-dead", 2)]
        assert await store.history("m1") == []
        assert [h.event.kind for h in await store.history("m2")] == ["opened"]  # open: kept
        kept = await store.load_obligations(["m1", "m2", "m3"])
        assert {o.meter_id: o.version for o in kept.values()} == {"m1": 2, "m2": 1, "m3": 2}
        assert await store.purge(T0 + 90 * DAY) == {"events": 0, "notifications": 0, "deliveries": 0, "silences": 0}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_purge_keeps_recent_history(tmp_path: Path, backend: str) -> None:
    async with store_for(backend, tmp_path) as store:
        store.set_fence(await store.try_acquire_leadership("t"))
        ob = obligation("m1", "AUTH_1")
        done = replace(ob, status="resolved", resolution="cleared", resolved_at=T0 + DAY, version=2)
        await store.commit_page([done], [event(ob), event(done, "resolved", T0 + DAY)])
        await store.commit_routing(RoutingWrite(consumed=[event(ob).id, event(done, "resolved").id]))
        assert (await store.purge(T0))["events"] == 0  # resolved after the cutoff: kept
        assert len(await store.history("m1")) == 2
