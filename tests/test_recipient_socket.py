"""What a broadcast carries for the recipient, through the real socket (CONTRACT §7 and §8,
docs/protocol.md): the ETA, geofence events, fix quality, and the parcel's timeline.
The estimator's behaviour on long synthetic routes is in tests/test_journey.py."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from realtime.journey import distance_m
from tests.conftest import body, path_to, recv, settings
from tests.helpers import expect_update, nothing_arrives, scene, subscribed

DESTINATION = (28.55, 77.20)  # World.parcel's
PICKUP = (28.61, 77.23)
METRES_PER_DEGREE_LAT = distance_m((28.0, 77.0), (29.0, 77.0))


def north_of(point: tuple[float, float], metres: float) -> tuple[float, float]:
    return round(point[0] + metres / METRES_PER_DEGREE_LAT, 7), point[1]


async def fix(driver, watcher, lat: float, lng: float, **extra) -> dict:
    """Send one fix; the watcher's copy of its broadcast."""
    driver.write_message(json.dumps({"type": "location_update", "lat": lat, "lng": lng, **extra}))
    await expect_update(driver, lat, lng)
    got = await expect_update(watcher, lat, lng)
    return got


@pytest.mark.gen_test(timeout=60)
async def test_a_steady_drive_gets_an_eta_within_a_quarter_after_ten_updates_that_never_jumps_up(world):
    s = await scene(world, "in_transit")
    driver, owner = await subscribed(world, s.id, s.driver), await subscribed(world, s.id, s.client)
    speed, start, interval = 15.0, 2000.0, 0.3
    began, etas = time.monotonic(), []
    for i in range(14):
        await asyncio.sleep(max(0.0, began + i * interval - time.monotonic()))
        remaining = start - speed * i * interval
        got = await fix(driver, owner, *north_of(DESTINATION, remaining))
        etas.append((remaining / speed, got["eta"]))
    assert etas[0][1] is None  # one fix says nothing of the speed
    for truth, eta in etas[10:]:
        assert eta["to"] == "destination"
        assert abs(eta["seconds"] - truth) <= 0.25 * truth, (eta, truth)
        assert abs(eta["distance_m"] - truth * speed) <= 5
    seconds = [eta["seconds"] for _, eta in etas if eta]
    assert all(b <= a * 1.25 + 1 for a, b in zip(seconds, seconds[1:], strict=False))


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("status, to", [("assigned", "pickup"), ("picked_up", "destination"), ("pending", None)])
async def test_the_eta_is_to_the_pickup_while_assigned_and_to_the_destination_once_picked_up(world, status, to):
    s = await scene(world, "in_transit" if status == "pending" else status)
    driver, owner = await subscribed(world, s.id, s.driver), await subscribed(world, s.id, s.client)
    target = PICKUP if to == "pickup" else DESTINATION
    for i in range(4):
        got = await fix(driver, owner, *north_of(target, 3000 - i * 20))
        await asyncio.sleep(0.8)
    if to is None:  # unassigned again: the parcel is going nowhere we can tell
        await world.app.db.parcels.update_one({"_id": s.id}, {"$set": {"status": "pending"}})
        world.app.hub.parcel_changed({**s.parcel, "status": "pending"})
        await recv(driver), await recv(owner)
        got = await fix(driver, owner, *north_of(target, 2900))
        assert got["eta"] is None
        return
    assert got["eta"]["to"] == to
    assert 2900 <= got["eta"]["distance_m"] <= 2950


@settings(geofence_radius_m=150.0)
@pytest.mark.gen_test(timeout=30)
async def test_geofence_events_come_once_per_crossing_and_jitter_at_the_edge_raises_none(world):
    s = await scene(world, "in_transit")
    driver, owner = await subscribed(world, s.id, s.driver), await subscribed(world, s.id, s.client)
    events = []
    for metres in (260, 210, 160, 140, 160, 145, 170, 200, 230, 180, 140):  # exits past 225 m
        await fix(driver, owner, *north_of(DESTINATION, metres))
        await asyncio.sleep(0.8)  # slow enough that no step is an impossible jump
        while True:
            try:
                message = await recv(owner, within=0.05)
            except TimeoutError:
                break
            assert message["type"] == "geofence", message
            assert set(message) == {"type", "parcel_id", "zone", "event", "timestamp"}
            assert await recv(driver) == message  # every subscriber gets it
            events.append((message["zone"], message["event"]))
    assert events == [("destination", "enter"), ("destination", "exit"), ("destination", "enter")]


@pytest.mark.gen_test(timeout=30)
async def test_a_vague_fix_or_an_impossible_jump_is_broadcast_and_stored_but_marked_low(world):
    s = await scene(world, "in_transit")
    driver, owner = await subscribed(world, s.id, s.driver), await subscribed(world, s.id, s.client)
    good = await fix(driver, owner, 28.60, 77.20, accuracy=12)
    assert "quality" not in good
    vague = await fix(driver, owner, 28.6001, 77.20, accuracy=250)
    assert vague["quality"] == "low"
    jump = await fix(driver, owner, 28.70, 77.20)  # 11 km within a moment
    assert jump["quality"] == "low"
    await asyncio.sleep(0.3)
    back = await fix(driver, owner, 28.6002, 77.20, accuracy=30)
    assert "quality" not in back
    await nothing_arrives(owner)  # and no geofence was raised by the jump


@pytest.mark.gen_test
async def test_the_timeline_lists_every_status_passed_with_its_time(world):
    s = await scene(world, "assigned")
    for step in path_to("delivered"):
        assert (await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, {"status": step})).code == 200
    timeline = body(await world.api("GET", f"/api/parcels/{s.id}/", s.client))["timeline"]
    assert [t["status"] for t in timeline] == ["pending", "assigned", "picked_up", "in_transit", "delivered"]
    stamps = [t["timestamp"] for t in timeline]
    assert stamps == sorted(stamps)
    page = (await world.page(f"/parcels/{s.id}/track", s.client)).body.decode()
    assert all(stamp in page for stamp in stamps)




async def link_viewer(world, parcel_id: int, owner) -> object:
    """A share link's socket, `subscribed` read (a short link made through the API)."""
    token = body(await world.api("POST", f"/api/parcels/{parcel_id}/share/", owner))["token"]
    ws = await world.socket(parcel_id, token)
    got = await recv(ws)
    assert got["type"] == "subscribed" and got["role"] == "viewer", got
    return ws


@settings(geofence_radius_m=150.0)
@pytest.mark.gen_test(timeout=30)
async def test_a_share_viewer_gets_the_truck_only_from_in_transit_but_statuses_and_geofences_always(world):
    s = await scene(world, "picked_up")
    driver, owner = await subscribed(world, s.id, s.driver), await subscribed(world, s.id, s.client)
    await fix(driver, owner, *north_of(PICKUP, 200))
    viewer = await link_viewer(world, s.id, s.client)
    await nothing_arrives(viewer)  # no snapshot of where the driver was before
    await asyncio.sleep(0.8)  # slow enough that no step is an impossible jump
    await fix(driver, owner, *north_of(PICKUP, 170))
    await asyncio.sleep(0.8)
    await fix(driver, owner, *north_of(PICKUP, 130))  # into the pickup's zone
    geofence = await recv(owner)
    assert geofence["type"] == "geofence" and geofence["event"] == "enter", geofence
    assert await recv(viewer) == geofence  # a geofence still reaches the viewer, the position did not
    assert await recv(driver) == geofence
    await nothing_arrives(viewer)

    assert (await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, {"status": "in_transit"})).code == 200
    assert (await recv(viewer))["status"] == "in_transit"
    await recv(driver), await recv(owner)
    late = await world.socket(s.id, body(await world.api("POST", f"/api/parcels/{s.id}/share/", s.client))["token"])
    assert (await recv(late))["status"] == "in_transit"
    await nothing_arrives(late)  # the latest position is from before it went in_transit: no snapshot either
    await asyncio.sleep(0.8)
    seen = await fix(driver, owner, *north_of(PICKUP, 100))
    for ws in (viewer, late):
        assert await expect_update(ws, *north_of(PICKUP, 100)) == {**seen, "driver_id": None}
    again = await link_viewer(world, s.id, s.client)
    assert (await expect_update(again, *north_of(PICKUP, 100)))["timestamp"] == seen["timestamp"]  # the snapshot now
