"""Offline batches against the security review (issue 16), through the real server, real
sockets and the real embedded database (docs/protocol.md, "Offline batches" and "What a
broadcast carries beyond the basics").

A late batch never moves the truck or the stored last location backwards, even after a
restart; a replayed batch stores nothing; a flood of batches stores about one row per
second of recorded time; a fix dated in the future is taken as now; a weak fix after a
status change never carries the ETA to the old target.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from models.db import iso, parse_iso
from models.locations import BATCH_SPACING
from tests.conftest import World, body, location, recv, settings
from tests.helpers import (
    Scene,
    another_server,
    expect_update,
    last_location,
    nothing_arrives,
    scene,
    send_location,
    socket_closed_by_server,
    subscribed,
)


def batch(fixes: list[tuple[float, datetime]], **fields: Any) -> str:
    """A location_batch frame of (lat, recorded_at) fixes at lng 77.1."""
    return json.dumps({"type": "location_batch", **fields, "locations": [
        {"lat": lat, "lng": 77.1, "address": f"offline {i}", "recorded_at": iso(when)}
        for i, (lat, when) in enumerate(fixes)]})


def spaced(start: datetime, n: int, every: float, first_lat: float = 28.5) -> list[tuple[float, datetime]]:
    """`n` fixes from `start`, `every` seconds apart, each at its own latitude."""
    return [(round(first_lat + i / 10_000, 6), start + timedelta(seconds=every * i)) for i in range(n)]


async def stored(world: World, s: Scene) -> list[dict[str, Any]]:
    """The parcel's whole history (up to 10,000 rows), once `world`'s writer has written what it holds."""
    await world.app.hub.writer.flush()
    response = await world.api("GET", f"/api/parcels/{s.id}/locations/?limit=10000", s.dispatcher)
    assert response.code == 200, response.body
    return body(response)["locations"]


# -- 1. a late batch after a restart ----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_late_batch_after_a_restart_moves_neither_the_truck_nor_the_stored_last_location_back(
        world, db_server):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    for i in range(1, 4):
        last = await send_location(driver, 28.0 + i / 100, 77.0, address=f"live {i}")
    await socket_closed_by_server(world, s, driver)  # the last live fix is written on close
    assert await last_location(world, s) == (28.03, 77.0)
    newest = parse_iso(last["timestamp"])
    async with another_server(world, db_server) as fresh:  # the hub's in-memory latest is empty
        watcher = await subscribed(fresh, s.id, s.client)
        await expect_update(watcher, 28.03, 77.0)  # the snapshot, from the stored last location
        phone = await subscribed(fresh, s.id, s.driver)
        await expect_update(phone, 28.03, 77.0)
        phone.write_message(batch(spaced(newest - timedelta(seconds=120), 9, 5.0), parcel_id=s.id))  # −120 … −80 s
        await nothing_arrives(watcher, phone)  # older than the parcel's newest fix: not broadcast
        newcomer = await subscribed(fresh, s.id, s.dispatcher)
        await expect_update(newcomer, 28.03, 77.0)  # its snapshot is still the newest fix
        history = await stored(fresh, s)
        assert len(history) == 10  # the late fixes are history all the same
        assert await last_location(fresh, s) == (28.03, 77.0)


# -- 2. batches multiplying history writes ---------------------------------------------------------------


@pytest.mark.gen_test
async def test_the_same_200_fix_batch_sent_twice_stores_200_rows(world):
    s = await scene(world)
    phone = await subscribed(world, s.id, s.driver)
    frame = batch(spaced(datetime.now(UTC) - timedelta(hours=1), 200, 5.0), parcel_id=s.id)
    phone.write_message(frame)
    await expect_update(phone, 28.5199, 77.1)  # the newest is broadcast
    phone.write_message(frame)  # a replay: nothing new to store or broadcast
    await nothing_arrives(phone)
    history = await stored(world, s)
    assert len(history) == 200
    assert [p["lat"] for p in history] == [lat for lat, _ in spaced(datetime.now(UTC), 200, 5.0)]


@pytest.mark.gen_test
async def test_a_flood_of_batches_stores_at_most_one_row_per_second_of_recorded_time(world):
    s = await scene(world)
    phone = await subscribed(world, s.id, s.driver)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    fixes = spaced(start, 2000, 0.1)  # 200 s of fixes, ten a second
    for k in range(10):  # ten 200-fix batches: the rate limit's second
        phone.write_message(batch(fixes[200 * k:200 * (k + 1)], parcel_id=s.id))
    for k in range(10):
        await expect_update(phone, fixes[200 * k + 199][0], 77.1)  # each batch's newest is newer: broadcast
    history = await stored(world, s)
    span = (fixes[-1][1] - fixes[0][1]).total_seconds()
    assert 0.9 * span <= len(history) <= span + 1  # not 2,000
    times = [parse_iso(p["timestamp"]) for p in history]
    assert all(b - a >= BATCH_SPACING for a, b in zip(times, times[1:], strict=False))
    assert history[-1]["lat"] == fixes[-1][0]  # the newest fix is among them


# -- 3. a batch fix dated in the future -------------------------------------------------------------------


@pytest.mark.gen_test
@settings(location_sample_every=1)
async def test_a_batch_fix_dated_55_s_ahead_is_taken_as_now_and_live_fixes_move_the_last_location_on(world):
    s = await scene(world)
    phone = await subscribed(world, s.id, s.driver)
    sent_at = datetime.now(UTC)
    phone.write_message(batch([(28.9, sent_at + timedelta(seconds=55))], parcel_id=s.id))
    echo = await expect_update(phone, 28.9, 77.1)
    assert parse_iso(echo["timestamp"]) <= datetime.now(UTC)  # now, not 55 s ahead
    live = [28.61, 28.62, 28.63]
    for lat in live:
        await send_location(phone, lat, 77.2)
        assert await last_location(world, s) == (lat, 77.2)  # the live fixes, not the batch's
    assert [p["lat"] for p in await stored(world, s)] == [28.9, *live]


# -- 4. the ETA of a weak fix after a status change --------------------------------------------------------


@pytest.mark.gen_test
async def test_a_weak_fix_after_pickup_never_carries_the_eta_to_the_pickup(world):
    s = await scene(world, status="assigned")
    phone = await subscribed(world, s.id, s.driver)
    watcher = await subscribed(world, s.id, s.client)
    pickup = s.parcel["pickup"]
    now = datetime.now(UTC)
    for i in range(3):  # closing in on the pickup, 55 m every 5 s, recorded offline
        lat = round(pickup["lat"] + 0.01 - i * 0.0005, 6)
        phone.write_message(json.dumps({"type": "location_batch", "parcel_id": s.id, "locations": [
            {"lat": lat, "lng": pickup["lng"], "recorded_at": iso(now - timedelta(seconds=30 - 5 * i))}]}))
        eta = (await recv(watcher))["eta"]
        await recv(phone)
    assert eta is not None and eta["to"] == "pickup"
    phone.write_message(location(pickup["lat"] + 0.009, pickup["lng"], accuracy=500))
    weak = await recv(watcher)
    await recv(phone)
    assert weak["quality"] == "low" and weak["eta"]["to"] == "pickup"  # still assigned: the estimate stands
    response = await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, {"status": "picked_up"})
    assert response.code == 200, response.body
    for ws in (watcher, phone):
        assert (await recv(ws))["status"] == "picked_up"
    phone.write_message(location(pickup["lat"] + 0.009, pickup["lng"], accuracy=500))
    weak = await recv(watcher)
    assert weak["type"] == "location_update" and weak["quality"] == "low"
    assert weak["eta"] is None or weak["eta"]["to"] == "destination", weak["eta"]
