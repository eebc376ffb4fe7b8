"""Failed deliveries and the route with its "stops before yours" (CONTRACT §10, docs/protocol.md
"A delivery that fails" and "The route"), through the real server, database and sockets."""

from __future__ import annotations

import json

import pytest

from models import parcels
from tests.conftest import World, body, recv, refused
from tests.helpers import expect_closed, expect_update, nothing_arrives, scene, subscribed


async def fail(world: World, parcel_id: int, who, **details) -> object:
    return await world.api("POST", f"/api/parcels/{parcel_id}/status/", who, {"status": "failed", **details})


async def route_socket(world: World, driver) -> tuple[object, list[int]]:
    ws = await world.socket(None, world.token(driver), path="/ws/driver/")
    got = await recv(ws)
    assert got["type"] == "subscribed", got
    return ws, got["parcels"]


@pytest.mark.gen_test
async def test_a_failed_delivery_is_finished_counted_shown_and_attempted_again(world):
    s = await scene(world)
    watcher = await subscribed(world, s.id, s.client)
    route, ids = await route_socket(world, s.driver)
    assert ids == [s.id]
    link = body(await world.api("POST", f"/api/parcels/{s.id}/share/", s.client))["token"]
    viewer = await world.socket(s.id, link)
    assert (await recv(viewer))["type"] == "subscribed"

    answer = await fail(world, s.id, s.driver, reason="nobody_home", note="Gate locked, no answer at 14:05")
    assert answer.code == 200, answer.body
    failed = body(answer)
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["failure"]["reason"] == "nobody_home"
    assert failed["failure"]["note"] == "Gate locked, no answer at 14:05"
    assert failed["timeline"][-1] | {"timestamp": None} == {
        "status": "failed", "timestamp": None, "reason": "nobody_home", "note": "Gate locked, no answer at 14:05"}
    assert failed["stops_before"] is None  # on no route now
    assert (await recv(watcher))["status"] == "failed"
    assert (await recv(route))["status"] == "failed"
    assert await recv(route) == {"type": "parcels", "parcels": []}  # it left the driver's route
    assert (await recv(viewer))["status"] == "failed"
    assert (await recv(viewer))["type"] == "error"
    await expect_closed(viewer, 4401)  # finished: share sockets close, as for a delivered parcel
    active = body(await world.api("GET", "/api/parcels/?active=1", s.dispatcher))
    assert s.id not in [p["id"] for p in active]

    # A dispatcher attempts it again: failed → assigned, last on the driver's route.
    other = await world.parcel(s.client, s.driver, status="picked_up")
    again = await world.api("POST", f"/api/parcels/{s.id}/assign/", s.dispatcher, {"driver_id": s.driver.id})
    assert again.code == 200
    again = body(await world.api("GET", f"/api/parcels/{s.id}/", s.client))
    assert again["status"] == "assigned" and again["attempts"] == 1 and again["stops_before"] == 1
    assert [t["status"] for t in again["timeline"]][-2:] == ["failed", "assigned"]
    assert body(await world.api("GET", f"/api/parcels/{other['_id']}/", s.client))["stops_before"] == 0


@pytest.mark.gen_test
async def test_a_failure_needs_a_known_reason_the_right_person_and_status_and_stores_nothing_otherwise(world):
    s = await scene(world)
    for details, fragment in [({}, "reason"), ({"reason": "aliens"}, "reason"),
                              ({"reason": "other", "note": "x" * 501}, "500"),
                              ({"reason": "other", "note": 5}, "note")]:
        assert fragment in refused(await fail(world, s.id, s.driver, **details), 400, details)
    refused(await fail(world, s.id, s.client, reason="refused"), 403)
    stranger = await world.user("driver")
    refused(await fail(world, s.id, stranger, reason="refused"), 404)
    early = await world.parcel(s.client, s.driver, status="picked_up")
    refused(await fail(world, early["_id"], s.driver, reason="refused"), 409)
    stored = await parcels.get_parcel(world.app.db, s.id)
    assert stored["status"] == "in_transit" and "failure" not in stored and stored.get("attempts", 0) == 0
    assert (await fail(world, s.id, s.dispatcher, reason="damaged")).code == 200  # a dispatcher may too
    cancelled = await world.api("POST", f"/api/parcels/{s.id}/status/", s.dispatcher, {"status": "cancelled"})
    assert body(cancelled)["status"] == "cancelled"  # a failed parcel may be given up


@pytest.mark.gen_test
async def test_a_dispatcher_orders_the_route_and_watchers_hear_of_the_stops_before_theirs(world):
    client, driver, dispatcher = [await world.user(role) for role in ("client", "driver", "dispatcher")]
    stops = [await world.parcel(client, driver, status="in_transit") for _ in range(3)]
    ids = [p["_id"] for p in stops]
    route, order = await route_socket(world, driver)
    assert order == ids  # new assignments go last
    last = await subscribed(world, ids[2], client)
    positions = [body(await world.api("GET", f"/api/parcels/{i}/", client))["stops_before"] for i in ids]
    assert positions == [0, 1, 2]
    listed = body(await world.api("GET", "/api/parcels/?active=1", dispatcher))
    assert {p["id"]: p["stops_before"] for p in listed if p["id"] in ids} == {ids[0]: 0, ids[1]: 1, ids[2]: 2}

    put = await world.api("PUT", f"/api/drivers/{driver.id}/route/", dispatcher, {"parcels": [ids[2], ids[0], ids[1]]})
    assert put.code == 200, put.body
    assert body(put) == {"driver_id": driver.id, "parcels": [ids[2], ids[0], ids[1]]}
    assert await recv(route) == {"type": "parcels", "parcels": [ids[2], ids[0], ids[1]]}
    assert await recv(last) == {"type": "route_position", "parcel_id": ids[2], "stops_before": 0}
    assert body(await world.api("GET", f"/api/parcels/{ids[1]}/", client))["stops_before"] == 2
    page = (await world.page("/driver", driver)).body.decode()
    assert page.index(f"Parcel #{ids[2]}") < page.index(f"Parcel #{ids[0]}") < page.index(f"Parcel #{ids[1]}")

    # A stop before it finishing moves it up; a new assignment goes last.
    first_watch = await subscribed(world, ids[1], client)
    assert (await fail(world, ids[2], driver, reason="refused")).code == 200
    assert await recv(first_watch) == {"type": "route_position", "parcel_id": ids[1], "stops_before": 1}
    new = await world.parcel(client)
    assert (await world.api("POST", f"/api/parcels/{new['_id']}/assign/", dispatcher,
                            {"driver_id": driver.id})).code == 200
    assert body(await world.api("GET", f"/api/parcels/{new['_id']}/", client))["stops_before"] == 2
    await nothing_arrives(first_watch)  # a stop added after it changes nothing before it


@pytest.mark.gen_test
async def test_a_route_must_name_exactly_the_drivers_active_parcels(world):
    client, driver, dispatcher = [await world.user(role) for role in ("client", "driver", "dispatcher")]
    ids = [(await world.parcel(client, driver, status="assigned"))["_id"] for _ in range(2)]
    done = await world.parcel(client, driver, status="delivered")
    path = f"/api/drivers/{driver.id}/route/"
    for order in ([ids[0]], [*ids, done["_id"]], [ids[0], ids[0], ids[1]], [ids[1], "x"], "1,2", None):
        refused(await world.api("PUT", path, dispatcher, {"parcels": order}), 400, order)
    refused(await world.api("PUT", path, client, {"parcels": ids[::-1]}), 403)
    refused(await world.api("PUT", f"/api/drivers/{client.id}/route/", dispatcher, {"parcels": []}), 404)
    assert [p["_id"] for p in await parcels.active_for_driver(world.app.db, driver.id)] == ids


@pytest.mark.gen_test
async def test_a_share_link_shows_the_truck_only_once_its_parcel_is_the_next_stop(world):
    client, driver = await world.user("client"), await world.user("driver")
    first, second = [await world.parcel(client, driver, status="in_transit") for _ in range(2)]
    route, _ = await route_socket(world, driver)
    token = body(await world.api("POST", f"/api/parcels/{second['_id']}/share/", client))["token"]
    viewer = await world.socket(second["_id"], token)
    assert (await recv(viewer)).get("stops_before", 1) == 1
    route.write_message(json.dumps({"type": "location_update", "lat": 28.6, "lng": 77.2}))
    await expect_update(route, 28.6, 77.2)
    await expect_update(route, 28.6, 77.2)  # the echo for each of the two parcels
    await nothing_arrives(viewer)  # another customer's stop comes first: no truck for this link
    assert (await world.api("GET", f"/t/{token}/locations")).code == 200
    assert body(await world.api("GET", f"/t/{token}/locations"))["locations"] == []
    delivered = await world.api("POST", f"/api/parcels/{first['_id']}/status/", driver, {"status": "delivered"})
    assert delivered.code == 200
    assert await recv(viewer) == {"type": "route_position", "parcel_id": second["_id"], "stops_before": 0}
    assert (await recv(route))["status"] == "delivered"
    assert await recv(route) == {"type": "parcels", "parcels": [second["_id"]]}
    route.write_message(json.dumps({"type": "location_update", "lat": 28.59, "lng": 77.2}))
    await expect_update(viewer, 28.59, 77.2)  # now the next stop: the link shows the truck


@pytest.mark.gen_test
async def test_the_dispatch_page_leads_with_failed_parcels_and_moves_stops(world):
    client, driver, dispatcher = [await world.user(role) for role in ("client", "driver", "dispatcher")]
    ids = [(await world.parcel(client, driver, status="in_transit"))["_id"] for _ in range(3)]
    await world.parcel(client)  # a pending one, newer than all
    assert (await fail(world, ids[0], driver, reason="address_not_found", note="No such house number")).code == 200
    page = (await world.page("/dispatch", dispatcher)).body.decode()
    assert 'id="attention"' in page, page[page.index("<main"):][:3000]
    attention = page.index('id="attention"')
    assert attention < page.index(f'id="parcel-{ids[0]}"') < page.index('<caption class="visually-hidden">Parcels with')
    assert page.count(f'id="parcel-{ids[0]}"') == 1
    assert "Address not found: No such house number" in page
    assert "Stop 1 of 2" in page and "Stop 2 of 2" in page
    moved = await world.page(f"/dispatch/parcels/{ids[2]}/move", dispatcher, "POST", {"direction": "up"})
    assert moved.code == 302 and moved.headers["Location"].startswith(f"/dispatch?moved={ids[2]}")
    assert [p["_id"] for p in await parcels.active_for_driver(world.app.db, driver.id)] == [ids[2], ids[1]]
    notice = (await world.page(moved.headers["Location"].split("#")[0], dispatcher)).body.decode()
    assert f"Parcel #{ids[2]} is now stop 1 of its driver" in notice
    for who, parcel_id, direction, code in [(dispatcher, ids[2], "sideways", 400), (dispatcher, ids[0], "up", 409),
                                            (client, ids[2], "up", 403)]:
        move = await world.page(f"/dispatch/parcels/{parcel_id}/move", who, "POST", {"direction": direction})
        assert move.code == code, (parcel_id, direction, move.code)


@pytest.mark.gen_test
async def test_the_drivers_pages_show_whom_to_deliver_to_when_and_the_note(world):
    client, driver, dispatcher = [await world.user(role) for role in ("client", "driver", "dispatcher")]
    made = await world.api("POST", "/api/parcels/", dispatcher, {
        "owner_id": client.id, "pickup": {"lat": 28.61, "lng": 77.23, "address": "Shop"},
        "destination": {"lat": 28.55, "lng": 77.2, "address": "Flat 4"},
        "recipient": {"name": "Asha Rao", "phone": "+91 98100 12345", "email": "asha@example.test"},
        "note": "Ring twice & leave with the guard",
        "window": {"from": "2026-01-08T14:00:00Z", "to": "2026-01-08T16:30:00Z"}})
    assert made.code == 201, made.body
    parcel_id = body(made)["id"]
    assigned = await world.api("POST", f"/api/parcels/{parcel_id}/assign/", dispatcher, {"driver_id": driver.id})
    assert assigned.code == 200
    for path in ("/driver", f"/driver/parcels/{parcel_id}"):
        page = (await world.page(path, driver)).body.decode()
        assert "Asha Rao" in page and 'href="tel:+91 98100 12345"' in page, path
        assert "Ring twice &amp; leave with the guard" in page, path
        assert '<time datetime="2026-01-08T14:00:00.000Z" data-local>' in page, path
        assert "asha@example.test" not in page  # the driver needs the name and the phone, not the e-mail
