"""The driver's route socket and offline batches (CONTRACT §8, docs/protocol.md "The driver
socket" and "Offline batches"), through the real server and sockets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from models.db import iso
from tests.conftest import World, body, location, recv
from tests.helpers import expect_closed, expect_error, expect_update, nothing_arrives, subscribed


async def route(world: World, driver) -> tuple[object, list[int]]:
    ws = await world.socket(None, world.token(driver), path="/ws/driver/")
    got = await recv(ws)
    assert set(got) == {"type", "role", "parcels"} and got["type"] == "subscribed" and got["role"] == "driver", got
    return ws, got["parcels"]


async def day(world: World, n: int = 3):
    """A driver with `n` active parcels of different statuses, one finished one, and their owner."""
    client, driver, dispatcher = [await world.user(role) for role in ("client", "driver", "dispatcher")]
    statuses = ["assigned", "picked_up", "in_transit"] * n
    active = [await world.parcel(client, driver, status=statuses[i]) for i in range(n)]
    await world.parcel(client, driver, status="delivered")
    return client, driver, dispatcher, active


async def history(world: World, parcel_id: int, user) -> list[dict]:
    await world.app.hub.writer.flush()
    return body(await world.api("GET", f"/api/parcels/{parcel_id}/locations/", user))["locations"]


@pytest.mark.gen_test
async def test_one_fix_reaches_every_active_parcels_watchers_and_is_sampled_for_each(world):
    client, driver, _, active = await day(world)
    ws, ids = await route(world, driver)
    assert ids == [p["_id"] for p in active]  # the route's order: oldest first, finished ones left out
    watchers = [await subscribed(world, p["_id"], client) for p in active]
    for i in range(5):  # every 5th accepted update is sampled
        ws.write_message(location(28.60 + i / 1000, 77.20))
        for parcel_id, watcher in zip(ids, watchers, strict=True):
            got = await expect_update(watcher, 28.60 + i / 1000, 77.20)
            assert got["parcel_id"] == parcel_id and got["driver_id"] == str(driver.id)
        echoes = {(await recv(ws))["parcel_id"] for _ in ids}  # the route socket is a subscriber of each
        assert echoes == set(ids)
    for parcel_id in ids:
        assert [p["lat"] for p in await history(world, parcel_id, client)] == [28.60 + 4 / 1000]


@pytest.mark.gen_test
async def test_assignments_reassignments_and_finished_parcels_change_the_route_live(world):
    client, driver, dispatcher, active = await day(world, 2)
    ws, ids = await route(world, driver)
    dropped = await subscribed(world, ids[0], dispatcher)
    new = await world.parcel(client)
    assert (await world.api("POST", f"/api/parcels/{new['_id']}/assign/", dispatcher,
                            {"driver_id": driver.id})).code == 200
    assert await recv(ws) == {"type": "parcels", "parcels": [*ids, new["_id"]]}
    assert (await recv(ws))["status"] == "assigned"
    watcher = await subscribed(world, new["_id"], client)
    ws.write_message(location(28.5, 77.1))
    await expect_update(watcher, 28.5, 77.1)  # included from the next update on
    await expect_update(dropped, 28.5, 77.1)
    for _ in range(3):
        await recv(ws)
    other = await world.user("driver")
    assert (await world.api("POST", f"/api/parcels/{ids[0]}/assign/", dispatcher,
                            {"driver_id": other.id})).code == 200
    assert (await recv(ws))["type"] == "status"
    assert await recv(ws) == {"type": "parcels", "parcels": [ids[1], new["_id"]]}
    assert (await recv(dropped))["type"] == "status"
    # Its watchers are told each time fewer stops come before it (docs/protocol.md, "The route").
    assert await recv(watcher) == {"type": "route_position", "parcel_id": new["_id"], "stops_before": 1}
    delivered = await world.api("POST", f"/api/parcels/{ids[1]}/status/", driver, {"status": "in_transit"})
    assert delivered.code == 200
    assert (await recv(ws))["status"] == "in_transit"
    assert (await world.api("POST", f"/api/parcels/{ids[1]}/status/", driver, {"status": "delivered"})).code == 200
    assert (await recv(ws))["status"] == "delivered"
    assert await recv(ws) == {"type": "parcels", "parcels": [new["_id"]]}
    assert await recv(watcher) == {"type": "route_position", "parcel_id": new["_id"], "stops_before": 0}
    ws.write_message(location(28.4, 77.1))
    await expect_update(watcher, 28.4, 77.1)
    await expect_update(ws, 28.4, 77.1)
    await nothing_arrives(dropped, ws)  # the reassigned parcel no longer gets this driver's fixes


@pytest.mark.gen_test
async def test_only_drivers_open_it_a_bad_token_is_4401_and_no_parcels_is_an_error(world):
    client = await world.user("client")
    ws = await world.socket(None, world.token(client), path="/ws/driver/")
    await expect_error(ws)
    await expect_closed(ws, 4403)
    ws = await world.socket(None, "not-a-token", path="/ws/driver/")
    await expect_error(ws)
    await expect_closed(ws, 4401)
    idle = await world.user("driver")
    ws, ids = await route(world, idle)
    assert ids == []
    ws.write_message(location(28.5, 77.1))
    assert "no active parcels" in await expect_error(ws)
    ws.write_message(location(91, 77.1))
    assert "lat" in await expect_error(ws)


@pytest.mark.gen_test
async def test_a_parcel_id_on_the_route_socket_must_be_one_of_the_drivers_parcels(world):
    client, driver, _, active = await day(world, 2)
    ws, ids = await route(world, driver)
    watchers = [await subscribed(world, p, client) for p in ids]
    ws.write_message(location(28.5, 77.1, parcel_id=ids[1]))
    await expect_update(watchers[1], 28.5, 77.1)
    await expect_update(ws, 28.5, 77.1)
    await nothing_arrives(watchers[0])
    ws.write_message(location(28.5, 77.1, parcel_id=ids[1] + 100))
    assert "not one of your" in await expect_error(ws)


def batch(start: datetime, n: int, **fields) -> str:
    return json.dumps({"type": "location_batch", **fields, "locations": [
        {"lat": 28.5 + i / 1000, "lng": 77.1, "address": f"offline {i}",
         "recorded_at": iso(start + timedelta(seconds=5 * i))}
        for i in range(n)]})


@pytest.mark.gen_test
async def test_a_batch_is_stored_whole_with_its_times_and_only_the_newest_is_broadcast(world):
    client, driver, _, active = await day(world, 1)
    parcel_id = active[0]["_id"]
    ws = await subscribed(world, parcel_id, driver)
    watcher = await subscribed(world, parcel_id, client)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    ws.write_message(batch(start, 3, parcel_id=parcel_id))
    newest = await expect_update(watcher, 28.502, 77.1)
    assert newest["timestamp"] == iso(start + timedelta(seconds=10))
    await nothing_arrives(watcher)
    stored = await history(world, parcel_id, client)
    assert [(p["address"], p["timestamp"]) for p in stored] == [
        (f"offline {i}", iso(start + timedelta(seconds=5 * i))) for i in range(3)]
    # a live fix is newer; a late batch older than it (newer than the first batch) is stored but not broadcast
    await expect_update(ws, 28.502, 77.1)
    ws.write_message(location(28.6, 77.2))
    await expect_update(watcher, 28.6, 77.2)
    await expect_update(ws, 28.6, 77.2)
    ws.write_message(batch(start + timedelta(minutes=5), 2, parcel_id=parcel_id))
    await nothing_arrives(watcher)
    assert len(await history(world, parcel_id, client)) == 5


@pytest.mark.gen_test
async def test_a_batch_on_the_route_socket_is_stored_for_every_active_parcel(world):
    client, driver, _, active = await day(world, 2)
    ws, ids = await route(world, driver)
    start = datetime.now(UTC) - timedelta(minutes=3)
    ws.write_message(batch(start, 4))
    for _ in ids:
        await recv(ws)
    for parcel_id in ids:
        assert [p["address"] for p in await history(world, parcel_id, client)] == [f"offline {i}" for i in range(4)]


@pytest.mark.gen_test
@pytest.mark.parametrize("entries, fragment", [
    ([], "non-empty"),
    ([{"lat": 28.5, "lng": 77.1}], "locations[0]: recorded_at"),
    ([{"lat": 28.5, "lng": 77.1, "recorded_at": "now"}], "locations[0]: recorded_at"),
    ("ok,ok,bad-lat", "locations[2]: lat"),
    ("ok,old", "locations[1]: recorded_at"),
    ("ok,future", "locations[1]: recorded_at"),
    ("late,ok", "locations[1]: recorded_at must not be earlier"),
    ("too-many", "at most 200"),
])
async def test_a_bad_batch_is_refused_whole_naming_the_entry_and_nothing_is_stored(world, entries, fragment):
    client, driver, _, active = await day(world, 1)
    parcel_id = active[0]["_id"]
    ws = await subscribed(world, parcel_id, driver)
    now = datetime.now(UTC)
    shapes = {
        "ok": {"lat": 28.5, "lng": 77.1, "recorded_at": iso(now - timedelta(minutes=1))},
        "bad-lat": {"lat": 128.5, "lng": 77.1, "recorded_at": iso(now)},
        "old": {"lat": 28.5, "lng": 77.1, "recorded_at": iso(now - timedelta(hours=25))},
        "future": {"lat": 28.5, "lng": 77.1, "recorded_at": iso(now + timedelta(minutes=5))},
        "late": {"lat": 28.5, "lng": 77.1, "recorded_at": iso(now)},
    }
    if entries == "too-many":
        entries = [shapes["ok"]] * 201
    elif isinstance(entries, str):
        entries = [shapes[name] for name in entries.split(",")]
    ws.write_message(json.dumps({"type": "location_batch", "parcel_id": parcel_id, "locations": entries}))
    assert fragment in await expect_error(ws)
    assert await history(world, parcel_id, client) == []
    ws.write_message(location(28.6, 77.2))
    await expect_update(ws, 28.6, 77.2)  # still open


@pytest.mark.gen_test
async def test_a_batch_counts_once_for_the_rate_limit_and_may_fill_64_kib_while_others_keep_4_kib(world):
    client, driver, _, active = await day(world, 1)
    parcel_id = active[0]["_id"]
    ws = await subscribed(world, parcel_id, driver)
    start = datetime.now(UTC) - timedelta(hours=1)
    big = json.loads(batch(start, 200, parcel_id=parcel_id))
    for entry in big["locations"]:
        entry["address"] = "x" * 200
    frame = json.dumps(big)
    assert 40_000 < len(frame) < 64 * 1024
    for _ in range(9):
        ws.write_message(location(28.6, 77.2))
        await expect_update(ws, 28.6, 77.2)
    ws.write_message(frame)  # the tenth message this second
    await nothing_arrives(ws)  # accepted (no error), and older than the live fixes: not broadcast
    assert len(await history(world, parcel_id, client)) >= 200
    oversized = await subscribed(world, parcel_id, driver)
    await expect_update(oversized, 28.6, 77.2)  # the snapshot
    oversized.write_message(location(28.6, 77.2, address="y" * 5000))
    await expect_closed(oversized, 1009)
