"""The hub's memory of parcels: changes made by another process, and parcels whose journey ended."""

from __future__ import annotations

import asyncio

import pytest

from devtools.process import app_env, run_cli
from tests.conftest import body, location, recv, settings


@pytest.mark.gen_test(timeout=30)
@settings(parcel_state_ttl=0.2)
async def test_a_reassignment_by_the_cli_reaches_the_live_sockets(world, db_server):
    client = await world.user("client")
    old, new = await world.user("driver"), await world.user("driver")
    parcel = await world.parcel(client, old, status="in_transit")
    watcher = await world.watch(parcel, client)
    driver = await world.watch(parcel, old)

    # Another process (the CLI) reassigns: this server's hub is not told.
    env = app_env(MONGODB_URI=db_server, MONGODB_DB=world.app.config.mongodb_db)
    done = await asyncio.to_thread(run_cli, "assign", str(parcel["_id"]), new.email, env=env)
    assert done.returncode == 0, done.stderr

    # Once its copy is older than the TTL, the next message makes the hub look again.
    await asyncio.sleep(world.app.config.parcel_state_ttl + 0.05)
    driver.write_message(location(28.6))
    messages = []
    while (message := await recv(driver)) is not None:
        messages.append(message)
    assert messages[-1] == {"type": "error", "message": "you are no longer assigned to this parcel"}
    assert driver.close_code == 4403
    seen = [await recv(watcher) for _ in range(2)]
    assert seen[-1]["type"] == "status" and seen[-1]["status"] == "in_transit"


@pytest.mark.gen_test
async def test_a_delivered_parcel_keeps_the_drivers_final_position(world):
    client, driver_user = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver_user, status="in_transit")
    driver = await world.watch(parcel, driver_user)
    for lat in (28.61, 28.62, 28.63):  # fewer than LOCATION_SAMPLE_EVERY: none sampled yet
        driver.write_message(location(lat))
        await recv(driver)
    delivered = await world.api("POST", f"/api/parcels/{parcel['_id']}/status/", driver_user,
                                body={"status": "delivered"})
    assert delivered.code == 200
    assert (await recv(driver))["status"] == "delivered"
    await world.app.hub.writer.flush()  # the driver is still connected: delivery itself wrote it
    stored = body(await world.api("GET", f"/api/parcels/{parcel['_id']}/", client))
    assert stored["last_location"]["lat"] == 28.63
    history = body(await world.api("GET", f"/api/parcels/{parcel['_id']}/locations/", client))["locations"]
    assert [p["lat"] for p in history] == [28.63]
    late = await world.socket(parcel["_id"], world.token(client))
    assert (await recv(late))["status"] == "delivered"
    assert (await recv(late))["location"]["lat"] == 28.63  # the snapshot, now from the database


@pytest.mark.gen_test
async def test_a_finished_parcel_leaves_nothing_behind_in_the_hub(world):
    client, driver_user, dispatcher = [await world.user(role) for role in ("client", "driver", "dispatcher")]
    parcel = await world.parcel(client, driver_user, status="in_transit")
    hub, parcel_id = world.app.hub, parcel["_id"]
    board = await world.socket(None, world.token(dispatcher), path="/ws/dispatch/")
    assert (await recv(board))["type"] == "board"
    route = await world.socket(None, world.token(driver_user), path="/ws/driver/")
    assert (await recv(route))["parcels"] == [parcel_id]
    watcher = await world.watch(parcel, client)
    driver = await world.watch(parcel, driver_user)
    for lat in (28.61, 28.62, 28.63):  # fewer than LOCATION_SAMPLE_EVERY: the last one is unsaved
        driver.write_message(location(lat))
        await recv(watcher)
    assert hub.channel(parcel_id) is not None
    delivered = await world.api("POST", f"/api/parcels/{parcel_id}/status/", driver_user,
                                body={"status": "delivered"})
    assert delivered.code == 200
    assert (await recv(watcher))["status"] == "delivered"

    for ws in (watcher, driver, route, board):
        ws.close()
    for _ in range(200):  # the server sees the closes on its next turns
        if hub.channel(parcel_id) is None and not hub.open_sockets():
            break
        await asyncio.sleep(0.01)
    assert hub.channel(parcel_id) is None
    assert hub.subscriber_count(parcel_id) == 0 and hub.latest_location(parcel_id) is None
    await hub.writer.flush()
    stored = body(await world.api("GET", f"/api/parcels/{parcel_id}/", client))
    assert stored["last_location"]["lat"] == 28.63  # the unsaved position was written on the way out
