"""Persistence of live locations (docs/protocol.md, "What is stored").

The sampling rule, the write on close, failing writes.

Every LOCATION_SAMPLE_EVERY-th accepted update of a parcel goes to its sampled history
and becomes its `last_location`; when the driver's socket closes its latest accepted
update is written too; a database that refuses a write never stops the live broadcast.
Everything is read back through the HTTP API once the sample writer has been flushed.

A driver sends through two sockets here (two devices) so that a dozen quick updates
stay under the limit of 10 messages a second per socket without sleeping.
"""

from __future__ import annotations

import itertools
import json
import logging

import pytest
from tornado.websocket import WebSocketClientConnection

from models.db import utcnow
from models.locations import SampleWriter
from tests.conftest import World, location, recv, settings
from tests.helpers import (
    Scene,
    another_server,
    history,
    last_location,
    scene,
    send_location,
    socket_closed_by_server,
    subscribed,
    until,
)


def point(n: int) -> tuple[float, float]:
    """The n-th position of a drive (1-based), distinct for every n."""
    return 28.5 + n / 1000, 77.1 + n / 1000


async def drive(sockets: list[WebSocketClientConnection], numbers: range, *watchers: WebSocketClientConnection) -> None:
    """Send the positions `numbers` in order, round-robin over the driver's sockets, each one accepted
    (and read by every socket: each of the driver's devices receives every update too)."""
    for n, ws in zip(numbers, itertools.cycle(sockets), strict=False):
        await send_location(ws, *point(n), *(other for other in sockets if other is not ws), *watchers,
                            address=f"stop {n}")


async def driver_sockets(world: World, s: Scene, count: int = 2) -> list[WebSocketClientConnection]:
    return [await subscribed(world, s.id, s.driver) for _ in range(count)]


@pytest.mark.gen_test
async def test_every_fifth_update_is_stored_and_closing_writes_the_last_one(world):
    assert world.app.config.location_sample_every == 5  # the default
    s = await scene(world)
    phone, tablet = await driver_sockets(world, s)
    await drive([phone, tablet], range(1, 13))  # 12 updates; the tablet sends the 12th
    assert await history(world, s) == [point(5), point(10)]
    assert await last_location(world, s) == point(10)
    await socket_closed_by_server(world, s, tablet)
    assert await history(world, s) == [point(5), point(10), point(12)]
    assert await last_location(world, s) == point(12)
    await socket_closed_by_server(world, s, phone)  # the driver's other device: nothing new to write
    assert await history(world, s) == [point(5), point(10), point(12)]


@pytest.mark.gen_test
async def test_closing_right_after_a_stored_update_writes_nothing_twice(world):
    s = await scene(world)
    sockets = await driver_sockets(world, s)
    await drive(sockets, range(1, 11))
    for ws in sockets:
        await socket_closed_by_server(world, s, ws)
    assert await history(world, s) == [point(5), point(10)]
    assert await last_location(world, s) == point(10)


@pytest.mark.gen_test
async def test_only_the_drivers_socket_closing_writes_its_last_update(world):
    s = await scene(world)
    watcher = await subscribed(world, s.id, s.client)
    sockets = await driver_sockets(world, s)
    await drive(sockets, range(1, 8), watcher)
    await socket_closed_by_server(world, s, watcher)
    assert await history(world, s) == [point(5)]
    await socket_closed_by_server(world, s, sockets[0])
    assert await history(world, s) == [point(5), point(7)]


@pytest.mark.gen_test
async def test_the_count_runs_on_across_reconnections(world):
    s = await scene(world)
    first = await subscribed(world, s.id, s.driver)
    await drive([first], range(1, 4))
    await socket_closed_by_server(world, s, first)  # writes update 3
    second = await subscribed(world, s.id, s.driver)
    assert (await recv(second))["location"]["address"] == "stop 3"  # the snapshot
    await drive([second], range(4, 6))  # update 5 is the fifth of the parcel
    assert await history(world, s) == [point(3), point(5)]


@pytest.mark.gen_test
@settings(location_sample_every=3)
async def test_the_sampling_interval_is_the_setting(world):
    s = await scene(world)
    await drive(await driver_sockets(world, s), range(1, 8))
    assert await history(world, s) == [point(3), point(6)]


@pytest.mark.gen_test
@settings(location_sample_every=1)
async def test_stored_samples_are_the_broadcast_positions_with_their_times(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    sent = [await send_location(driver, *point(n), address=f"stop {n}") for n in range(1, 4)]
    await world.app.hub.writer.flush()
    stored = (await world.api("GET", f"/api/parcels/{s.id}/locations/", s.dispatcher)).body
    assert json.loads(stored)["locations"] == [
        {**echo["location"], "timestamp": echo["timestamp"]} for echo in sent
    ]


@pytest.mark.gen_test
async def test_stopping_the_server_writes_the_last_update_of_a_driver_still_connected(world, db_server):
    s = await scene(world)
    async with another_server(world, db_server) as other:
        driver = await subscribed(other, s.id, s.driver)
        await drive([driver], range(1, 4))
    assert await last_location(world, s) == point(3)
    assert await history(world, s) == [point(3)]


# -- a database that refuses writes ---------------------------------------------------------------------


@pytest.mark.gen_test
@settings(location_sample_every=1)
async def test_a_database_refusing_writes_does_not_stop_the_live_broadcast(world, caplog):
    s = await scene(world)
    watcher = await subscribed(world, s.id, s.client)
    driver = await subscribed(world, s.id, s.driver)
    # Make the real database refuse every sample of this parcel: one sample already stored,
    # and a unique index on parcel_id, so each further insert is a duplicate-key error.
    locations = world.app.db.locations
    await send_location(driver, *point(1), watcher)
    assert await history(world, s) == [point(1)]
    index = await locations.create_index("parcel_id", unique=True)
    caplog.set_level(logging.ERROR, logger="parcel.locations")
    try:
        await drive([driver], range(2, 6), watcher)  # every update still reaches everyone, in order
        assert await history(world, s) == [point(1)]  # none of them was stored...
        assert any("could not write" in r.getMessage() for r in caplog.records)  # ...and that was logged
    finally:
        await locations.drop_index(index)
    await drive([driver], range(6, 7), watcher)  # the writer lives on once the database accepts again
    assert await history(world, s) == [point(1), point(6)]
    assert await last_location(world, s) == point(6)


@pytest.mark.gen_test
@settings(location_sample_every=1, sample_flush_interval=60)
async def test_a_sample_the_database_cannot_encode_does_not_break_the_writer(world, caplog):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    # A lone surrogate is valid in JSON text but cannot be encoded as UTF-8 for the database.
    driver.write_message(location(1.0, 2.0, address="\ud800"))
    answer = await recv(driver)
    if answer["type"] == "error":  # refusing it up front is fine too
        assert "address" in answer["message"]
    else:
        assert answer["type"] == "location_update"
    await world.app.hub.writer.flush()  # must not raise: the failure is logged, the writer goes on
    await send_location(driver, *point(2))
    assert await history(world, s) == [point(2)]


@pytest.mark.gen_test
async def test_the_fifth_accepted_update_is_stored_whatever_was_refused_in_between(world):
    s = await scene(world)
    sockets = await driver_sockets(world, s, 3)  # 15 frames: more than one socket may send in a second
    for n, driver in zip(range(1, 6), itertools.cycle(sockets), strict=False):
        driver.write_message("not json")
        assert (await recv(driver))["type"] == "error"
        driver.write_message(location(95.0, 0.0))  # out of range: refused
        assert (await recv(driver))["type"] == "error"
        await send_location(driver, *point(n), *(other for other in sockets if other is not driver))
    assert await history(world, s) == [point(5)]


@pytest.mark.gen_test
async def test_a_failing_timed_flush_is_logged_where_it_happens(world, caplog, monkeypatch):
    """Nothing awaits the writer's timed flush: what it raises is logged at once, with what it was doing."""
    writer = SampleWriter(world.app.db, flush_interval=0)

    async def broken(everything: bool) -> bool:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(writer, "_flush", broken)
    writer.add(1, 2, {"lat": 28.0, "lng": 77.0, "address": ""}, utcnow())
    await until(lambda: not writer._tasks and any(r.exc_info for r in caplog.records))
    [record] = [r for r in caplog.records if r.name == "parcel.locations"]
    assert record.levelno == logging.ERROR and "could not flush the location samples" in record.getMessage()
    assert "1 queued" in record.getMessage() and "a bug in the writer" in str(record.exc_info[1])
