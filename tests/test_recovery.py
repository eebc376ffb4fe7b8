"""Recovery on reconnect (docs/protocol.md, "Recovery on reconnect"): a watcher that comes back
with the last offset it saw gets every message it missed, in order, in one process and across two
processes behind one Redis; one that cannot be answered is told so and gets the snapshot. And with
Redis, a process receives only the events of the parcels it has subscribers for."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tornado.websocket import WebSocketClientConnection

from devtools.process import RedisServer
from realtime.broker import STREAM_MAX, Stream
from tests.conftest import World, location, recv
from tests.helpers import (
    another_server,
    expect_closed,
    expect_error,
    expect_update,
    scene,
    send_location,
    socket_closed_by_server,
    until,
)


async def first(world: World, parcel_id: int, token: str, **more: Any) -> tuple[WebSocketClientConnection,
                                                                               dict[str, Any]]:
    """A tracking socket and its `subscribed`, numbering included."""
    ws = await world.socket(parcel_id, token, **more)
    got = await recv(ws, numbered=True)
    assert got["type"] == "subscribed", got
    return ws, got


async def numbered(ws: WebSocketClientConnection, count: int) -> list[dict[str, Any]]:
    return [await recv(ws, numbered=True) for _ in range(count)]


async def away_and_back(world: World, back: World, s: Any) -> None:
    """A client watches on `world`, leaves, misses three fixes, a geofence and a status change
    made on `world`, and comes back on `back` with what it saw last: it gets them all, in order."""
    driver = await world.watch(s.parcel, s.driver)
    client, hello = await first(world, s.id, world.token(s.client))
    assert hello["offset"] >= 0 and "recovered" not in hello, hello
    # Just outside the destination's 150 m fence, then a few metres at a time (moves a moment
    # apart that a truck could make): the first missed fix enters it.
    driver.write_message(location(28.5514, 77.20))
    seen = (await numbered(client, 1))[0]
    assert seen["offset"] == hello["offset"] + 1, (hello, seen)
    await expect_update(driver, 28.5514, 77.20)
    client.close()

    await send_location(driver, 28.55133, 77.20)
    assert (await recv(driver))["type"] == "geofence"
    for lat in (28.55127, 28.5512):
        await send_location(driver, lat, 77.20)
    assert (await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, body={"status": "delivered"})).code == 200
    assert (await recv(driver))["type"] == "status"

    again, hello = await first(back, s.id, back.token(s.client), since=seen["offset"], epoch=hello["epoch"])
    assert hello["recovered"] is True and hello["offset"] == seen["offset"] + 5, hello
    missed = await numbered(again, 5)
    assert [m["offset"] for m in missed] == list(range(seen["offset"] + 1, seen["offset"] + 6))
    assert [m["type"] for m in missed] == ["location_update", "geofence", "location_update", "location_update",
                                           "status"], missed
    assert [m["location"]["lat"] for m in missed if m["type"] == "location_update"] == [28.55133, 28.55127, 28.5512]
    assert (missed[1]["zone"], missed[1]["event"], missed[4]["status"]) == ("destination", "enter", "delivered")
    # Nothing more: no snapshot after a recovery (it would be a message seen already).
    with pytest.raises(TimeoutError):
        await recv(again, within=0.3)


@pytest.mark.gen_test(timeout=30)
async def test_a_watcher_that_reconnects_gets_every_message_it_missed_in_order(world):
    await away_and_back(world, world, await scene(world, "in_transit"))


@pytest.mark.gen_test(timeout=30)
async def test_what_cannot_be_recovered_is_said_and_the_snapshot_follows(world, db_server):
    s = await scene(world)
    driver = await world.watch(s.parcel, s.driver)
    client, hello = await first(world, s.id, world.token(s.client))
    await send_location(driver, 28.6, 77.22, client)
    epoch, offset = hello["epoch"], hello["offset"] + 1
    for more, why in (({"since": offset, "epoch": "another"}, "another epoch"),
                      ({"since": offset + 50, "epoch": epoch}, "an offset the parcel has not reached"),
                      ({"since": offset}, "no epoch")):
        ws, got = await first(world, s.id, world.token(s.client), **more)
        assert got["recovered"] is False and (got["epoch"], got["offset"]) == (epoch, offset), (why, got)
        snapshot = await recv(ws, numbered=True)
        assert snapshot["location"]["lng"] == 77.22 and "offset" not in snapshot, (why, snapshot)
    ws, got = await first(world, s.id, world.token(s.client), since=offset, epoch=epoch)
    assert got["recovered"] is True, got  # nothing missed: nothing follows
    with pytest.raises(TimeoutError):
        await recv(ws, within=0.3)
    # Another server (a restart, without Redis) has other epochs: nothing it could recover.
    await socket_closed_by_server(world, s, driver)  # the driver's last fix is written
    await world.app.hub.writer.flush()
    async with another_server(world, db_server) as restarted:
        ws, got = await first(restarted, s.id, restarted.token(s.client), since=offset, epoch=epoch)
        assert got["recovered"] is False and got["epoch"] != epoch, got
        assert (await recv(ws))["location"]["lng"] == 77.22  # the stored last location


@pytest.mark.gen_test(timeout=30)
async def test_a_malformed_since_or_epoch_is_refused_with_4400(world):
    s = await scene(world)
    for more in ({"since": "-1", "epoch": "e"}, {"since": "1.5", "epoch": "e"}, {"since": "x"},
                 {"since": "1", "epoch": "e" * 65}):
        ws = await world.socket(s.id, world.token(s.client), **more)
        await expect_error(ws, "must be")
        await expect_closed(ws, 4400)


@pytest.mark.gen_test(timeout=30)
async def test_a_share_link_recovers_what_it_may_see_and_no_user_id(world):
    s = await scene(world, "picked_up")
    link = (await world.api("POST", f"/api/parcels/{s.id}/share/", s.client)).body
    token = json.loads(link)["token"]
    driver = await world.watch(s.parcel, s.driver)
    viewer, hello = await first(world, s.id, token)
    viewer.close()
    await send_location(driver, 28.6, 77.22)  # before in_transit: not the link's to see
    moved = await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, body={"status": "in_transit"})
    assert moved.code == 200, moved.body
    assert (await recv(driver))["type"] == "status"
    await send_location(driver, 28.59, 77.21)
    again, got = await first(world, s.id, token, since=hello["offset"], epoch=hello["epoch"])
    assert got["recovered"] is True and got["offset"] == hello["offset"] + 3, got
    status, fix = await numbered(again, 2)
    assert (status["type"], status["status"], status["offset"]) == ("status", "in_transit", hello["offset"] + 2)
    assert (fix["location"]["lat"], fix["driver_id"], fix["offset"]) == (28.59, None, hello["offset"] + 3), fix


@pytest.mark.gen_test(timeout=60)
async def test_with_redis_offsets_agree_and_recovery_works_on_either_process(world, db_server):
    redis = RedisServer().start()
    try:
        async with another_server(world, db_server, broker_url=redis.url) as one, \
                another_server(world, db_server, broker_url=redis.url) as two:
            s = await scene(one, "in_transit")
            watchers = [(await first(app, s.id, app.token(s.client)))[0] for app in (one, two)]
            driver = await one.watch(s.parcel, s.driver)
            driver.write_message(location(28.6, 77.22))
            got = [(await numbered(ws, 1))[0] for ws in watchers]
            assert got[0] == got[1] and got[0]["offset"] >= 1, got  # the same message, the same offset
            await expect_update(driver, 28.6, 77.22)
            for ws in watchers:
                ws.close()
            await away_and_back(one, two, await scene(one, "in_transit"))
            await away_and_back(two, one, await scene(one, "in_transit"))
    finally:
        redis.kill()


@pytest.mark.gen_test(timeout=60)
async def test_with_redis_a_process_receives_only_the_parcels_it_has_subscribers_for(world, db_server):
    redis = RedisServer().start()
    try:
        async with another_server(world, db_server, broker_url=redis.url) as busy, \
                another_server(world, db_server, broker_url=redis.url) as quiet:
            watched, other = await scene(busy, "in_transit"), await scene(busy, "in_transit")
            watcher = await quiet.watch(watched.parcel, watched.client)
            drivers = [await busy.watch(p.parcel, p.driver) for p in (watched, other)]
            for n in range(5):
                for ws in drivers:
                    await send_location(ws, 28.6, 77.2 + n / 100)
            for n in range(5):
                assert (await recv(watcher))["location"]["lng"] == 77.2 + n / 100
            assert quiet.app.hub.channel(other.id) is None  # never heard of
            # Once its last watcher leaves, the quiet process stops listening to the parcel.
            watcher.close()
            await until(lambda: quiet.app.hub.subscriber_count(watched.id) == 0)
            deliveries = quiet.app.hub.metrics.broadcasts_out._value.get()
            for n in range(5):
                await send_location(drivers[0], 28.6, 77.25 + n / 1000)
            await busy.app.hub.broker.ping()  # a round trip to Redis after the last publish
            assert quiet.app.hub.metrics.broadcasts_out._value.get() == deliveries
            assert quiet.app.hub.latest_location(watched.id)["location"]["lng"] == 77.2 + 4 / 100  # none came here
            late, hello = await first(quiet, watched.id, quiet.token(watched.client))
            assert hello["offset"] == 10, hello  # ten fixes of the parcel, numbered in Redis
            assert (await recv(late))["location"]["lng"] == 77.254  # the other process's driver, its newest fix
    finally:
        redis.kill()


def test_a_stream_holds_ten_minutes_of_messages_up_to_its_cap_and_says_when_it_cannot_recover():
    stream = Stream()
    for n in range(1, 301):  # 300 within ten minutes: every one is held, past the 200 at least
        stream.add(f'{{"type":"status","n":{n}}}', location=False, ended=False)
    recovery = stream.recover(0, stream.epoch)
    assert recovery.offset == 300 and [json.loads(m)["offset"] for m in recovery.missed] == list(range(1, 301))
    for n in range(301, STREAM_MAX + 501):
        stream.add(f'{{"type":"status","n":{n}}}', location=False, ended=False)
    assert len(stream.held) == STREAM_MAX
    assert stream.recover(400, stream.epoch).missed is None  # no longer held
    missed = stream.recover(STREAM_MAX + 499, stream.epoch).missed
    assert [json.loads(m) for m in missed] == [{"type": "status", "n": STREAM_MAX + 500, "offset": STREAM_MAX + 500}]
