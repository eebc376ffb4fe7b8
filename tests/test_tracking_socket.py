"""The tracking WebSocket from the outside (docs/protocol.md, "The tracking socket" and "Parcels and who sees them").

Real sockets on a real port, the real embedded database, no mocks. Every wait is
bounded; "nothing arrives" is a short bounded wait whose reason is given where it
is used. Persistence is read back through the HTTP API after the sample writer has
been flushed. The sampling rule has its own module, tests/test_tracking_sampling.py;
the helpers both use are in tests/helpers.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from models import parcels
from models.access import User
from settings import Settings
from tests.conftest import TEST_SECRET, World, body, claims, location, recv, settings
from tests.helpers import (
    Scene,
    SlowReader,
    another_server,
    assert_timestamp,
    expect_closed,
    expect_error,
    expect_update,
    history,
    last_location,
    nothing_arrives,
    parcel_json,
    rejected,
    scene,
    send_location,
    socket_closed_by_server,
    still_usable,
    subscribed,
    until,
)

# -- rejections: 4400, 4401, 4403 -------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("parcel_id", [None, "", "abc", "1.5", "1e3", "12abc", "0x1", "%ff"])
async def test_missing_or_malformed_parcel_id_is_refused_with_4400(world, parcel_id):
    s = await scene(world)
    message, _ = await rejected(world, parcel_id, world.token(s.driver), 4400)
    assert "parcel_id" in message


def tampered_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    return ".".join([header, payload, ("B" if signature[0] == "A" else "A") + signature[1:]])


def escalated(token: str) -> str:
    """The same signature over a payload that claims to be a dispatcher."""
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    forged_payload = jwt.utils.base64url_encode(json.dumps({**claims, "role": "dispatcher"}).encode()).decode()
    assert forged_payload != payload
    return ".".join([header, forged_payload, signature])


BAD_TOKENS: dict[str, Callable[[World, User], str | None]] = {
    "missing": lambda world, user: None,
    "empty": lambda world, user: "",
    "garbage": lambda world, user: "not-a-jwt",
    "expired": lambda world, user: world.token(user, ttl=-5),
    "signature changed": lambda world, user: tampered_signature(world.token(user)),
    "payload changed": lambda world, user: escalated(world.token(user)),
    "wrong key": lambda world, user: jwt.encode(claims(user), "another-secret-" + "y" * 40, algorithm="HS256"),
    "alg none": lambda world, user: jwt.encode(claims(user), key=None, algorithm="none"),
    "alg HS512": lambda world, user: jwt.encode(claims(user), TEST_SECRET, algorithm="HS512"),
    "no exp": lambda world, user: jwt.encode({k: v for k, v in claims(user).items() if k != "exp"}, TEST_SECRET),
    "refresh token": lambda world, user: world.token(user, "refresh"),
    "not UTF-8": lambda world, user: world.token(user) + "%ff",
}


@pytest.mark.gen_test
@pytest.mark.parametrize("kind", BAD_TOKENS)
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512 with the app's own key
async def test_missing_invalid_or_expired_token_is_refused_with_4401(world, kind):
    s = await scene(world)
    await rejected(world, s.id, BAD_TOKENS[kind](world, s.client), 4401)


@pytest.mark.gen_test
async def test_unknown_parcel_and_forbidden_parcel_get_the_same_4403(world):
    s = await scene(world)
    other_driver, other_client = await world.user("driver"), await world.user("client")
    missing = await rejected(world, s.id + 1000, world.token(s.client), 4403)
    assert await rejected(world, s.id, world.token(other_driver), 4403) == missing
    assert await rejected(world, s.id, world.token(other_client), 4403) == missing
    for no_such_id in ("0", "-1", "9" * 20, "9" * 5000):  # integers, just not ids of any parcel
        assert await rejected(world, no_such_id, world.token(s.dispatcher), 4403) == missing


# -- the permissions table -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_assigned_driver_connects_sends_and_receives_its_own_update(world):
    s = await scene(world)
    ws = await subscribed(world, s.id, s.driver)
    await send_location(ws, 28.6139, 77.209, address="New Delhi, India")


@pytest.mark.gen_test
@pytest.mark.parametrize("role", ["client", "dispatcher"])
async def test_owner_and_dispatcher_receive_but_cannot_send(world, role):
    s = await scene(world)
    watcher = await subscribed(world, s.id, getattr(s, role))
    driver = await subscribed(world, s.id, s.driver)
    await send_location(driver, 28.61, 77.21, watcher)
    watcher.write_message(location(1.0, 2.0))
    await expect_error(watcher, "only the parcel's assigned driver")
    # the refused location went to nobody, and the watcher's socket still receives
    await still_usable(driver, watcher)


@pytest.mark.gen_test
async def test_other_drivers_and_clients_are_rejected_even_with_a_parcel_of_their_own(world):
    s = await scene(world)
    other_driver, other_client = await world.user("driver"), await world.user("client")
    await world.parcel(other_client, other_driver, status="in_transit")
    for outsider in (other_driver, other_client):
        await rejected(world, s.id, world.token(outsider), 4403)


@pytest.mark.gen_test
async def test_the_owner_can_watch_a_parcel_that_has_no_driver_yet(world):
    client = await world.user("client")
    parcel = await world.parcel(client)
    ws = await subscribed(world, parcel["_id"], client)
    await nothing_arrives(ws)  # no location is known: no snapshot follows `subscribed`


# -- the origin check ---------------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1:1", "null", "http://127.0.0.1:{port}.evil.example",
                                    "http://evil.example/127.0.0.1:{port}",
                                    "http://user@127.0.0.1:{port}"])
async def test_browser_origin_not_allowed_gets_403_and_no_upgrade(world, origin):
    s = await scene(world)
    with pytest.raises(HTTPClientError) as refused:
        await world.socket(s.id, world.token(s.client), origin=origin.format(port=world.port))
    assert refused.value.code == 403


@pytest.mark.gen_test
async def test_own_origin_and_no_origin_are_accepted(world):
    s = await scene(world)
    await subscribed(world, s.id, s.client, origin=f"http://127.0.0.1:{world.port}")
    await subscribed(world, s.id, s.client, origin=f"HTTP://127.0.0.1:{world.port}")  # scheme and host ignore case
    await subscribed(world, s.id, s.client, origin=f"https://127.0.0.1:{world.port}")  # TLS ended by a proxy
    await subscribed(world, s.id, s.client)


def test_allowed_origins_are_read_from_the_environment():
    read = Settings.from_env({"ALLOWED_ORIGINS": " https://Track.Example.com/ ,,http://b.example:8080"})
    assert read.allowed_origins == ("https://track.example.com", "http://b.example:8080")
    assert Settings.from_env({}).allowed_origins == ()


@pytest.mark.gen_test
@settings(allowed_origins=("https://track.example.com",))
async def test_an_origin_listed_in_allowed_origins_is_accepted(world):
    s = await scene(world)
    await subscribed(world, s.id, s.client, origin="https://track.example.com")
    with pytest.raises(HTTPClientError) as refused:
        await world.socket(s.id, world.token(s.client), origin="https://other.example.com")
    assert refused.value.code == 403


@pytest.mark.gen_test
async def test_the_trailing_slash_is_optional(world):
    s = await scene(world)
    await subscribed(world, s.id, s.client, path="/ws/tracking")


@pytest.mark.gen_test
async def test_compression_is_not_negotiated_even_when_offered(world):
    s = await scene(world)
    request = HTTPRequest(f"ws://127.0.0.1:{world.port}/ws/tracking/?parcel_id={s.id}&token={world.token(s.client)}")
    ws = await websocket_connect(request, compression_options={})
    assert "Sec-WebSocket-Extensions" not in ws.headers
    assert (await recv(ws))["type"] == "subscribed"


# -- subscribed and the snapshot -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_snapshot_is_the_latest_live_update_even_when_newer_than_the_stored_one(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    sent = [await send_location(driver, 28.0 + i / 100, 77.0, address=f"stop {i}") for i in range(1, 7)]
    assert await last_location(world, s) == (28.05, 77.0)  # update 5 was stored; 6 only lives in memory
    sockets = [await subscribed(world, s.id, user) for user in (s.client, s.dispatcher, s.driver)]
    for ws in sockets:
        assert await recv(ws) == sent[-1]
    await nothing_arrives(*sockets)  # one snapshot, not a replay of the history


@pytest.mark.gen_test
async def test_snapshot_after_a_restart_comes_from_the_stored_last_location(world, db_server):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    for i in range(1, 4):
        await send_location(driver, 28.0 + i / 100, 77.0, address=f"stop {i}")
    await socket_closed_by_server(world, s, driver)  # the driver's last update is written on close
    stored = (await parcel_json(world, s))["last_location"]
    async with another_server(world, db_server) as fresh:
        ws = await subscribed(fresh, s.id, s.client)
        assert await recv(ws) == {
            "type": "location_update", "driver_id": str(s.driver.id), "parcel_id": s.id,
            "location": {"lat": 28.03, "lng": 77.0, "address": "stop 3"}, "timestamp": stored["timestamp"],
            "eta": None,  # a new process has seen no fix to measure the driver's speed by
        }


# -- the broadcast ---------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_broadcast_has_the_exact_shape_and_reaches_every_subscriber_including_the_sender(world):
    s = await scene(world)
    watchers = [await subscribed(world, s.id, user) for user in (s.client, s.dispatcher)]
    driver = await subscribed(world, s.id, s.driver)
    echo = await send_location(driver, 28.6139, 77.209, *watchers, address="New Delhi, India")
    assert set(echo) == {"type", "driver_id", "location", "parcel_id", "timestamp", "eta"}
    assert echo["eta"] is None  # one fix says nothing of the driver's speed
    assert echo["type"] == "location_update"
    assert echo["driver_id"] == str(s.driver.id)
    assert echo["location"] == {"lat": 28.6139, "lng": 77.209, "address": "New Delhi, India"}
    assert echo["parcel_id"] == s.id
    assert_timestamp(echo["timestamp"])


@pytest.mark.gen_test
async def test_watchers_of_another_parcel_receive_nothing(world):
    s = await scene(world)
    elsewhere = await world.parcel(s.client, s.driver, status="in_transit")
    bystander = await subscribed(world, elsewhere["_id"], s.client)
    driver = await subscribed(world, s.id, s.driver)
    await send_location(driver, 28.6, 77.2)
    await nothing_arrives(bystander)  # the broadcast above was already delivered to its own parcel


@pytest.mark.gen_test
async def test_every_subscriber_sees_the_same_order_across_many_quick_updates(world):
    s = await scene(world)
    watchers = [await subscribed(world, s.id, user) for user in (s.client, s.dispatcher, s.client)]
    senders = [await subscribed(world, s.id, s.driver) for _ in range(2)]  # one driver, two devices
    for i in range(10):  # 10 per socket, 20 for the driver: at the limits, not over them
        for n, sender in enumerate(senders):
            sender.write_message(location(10.0 + n, i / 100))
    seen = []
    for ws in watchers + senders:
        seen.append([(await recv(ws))["location"] for _ in range(20)])
    assert all(other == seen[0] for other in seen)
    for n in range(2):  # each device's own updates in the order it sent them
        assert [p["lng"] for p in seen[0] if p["lat"] == 10.0 + n] == [i / 100 for i in range(10)]
    await nothing_arrives(*watchers, *senders)  # nothing duplicated


@pytest.mark.gen_test
async def test_optional_extras_are_accepted(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    echo = await send_location(driver, 28.6, 77.2, accuracy=12.5, heading=90, speed=8.3, parcel_id=s.id)
    assert echo["location"]["accuracy"] == 12.5 and echo["location"]["speed"] == 8.3


# -- malformed messages: an error, and the socket stays usable -----------------------------------------------


def other_parcel_id(s: Scene) -> int:
    return s.id + 1


ERRORS: dict[str, tuple[str | Callable[[Scene], str], str]] = {
    "not JSON": ("hello there", "not valid JSON"),
    "truncated JSON": ('{"type": "location_update", "lat": 1', "not valid JSON"),
    "JSON array": ("[1, 2]", "JSON object"),
    "JSON number": ("42", "JSON object"),
    "JSON string": ('"location_update"', "JSON object"),
    "JSON null": ("null", "JSON object"),
    "deeply nested JSON": ("[" * 2000 + "]" * 2000, "nested"),
    "unknown type": (json.dumps({"type": "chat", "text": "hi"}), "unknown message type"),
    "missing type": (json.dumps({"lat": 1.0, "lng": 2.0}), "no type"),
    "missing lat": (json.dumps({"type": "location_update", "lng": 2.0}), "lat"),
    "missing lng": (json.dumps({"type": "location_update", "lat": 2.0}), "lng"),
    "string lat": (location("28.6"), "lat must be a finite number"),
    "bool lat": (location(True), "lat must be a finite number"),
    "null lat": (location(None), "lat"),
    "list lng": (location(28.6, [77.2]), "lng must be a finite number"),
    "NaN lat": ('{"type": "location_update", "lat": NaN, "lng": 77.2}', "lat must be a finite number"),
    "Infinity lng": ('{"type": "location_update", "lat": 28.6, "lng": Infinity}', "lng must be a finite number"),
    "-Infinity lat": ('{"type": "location_update", "lat": -Infinity, "lng": 77.2}', "lat must be a finite number"),
    "lat 90.0001": (location(90.0001, 0.0), "lat must be between -90 and 90"),
    "lat -91": (location(-91, 0.0), "lat must be between -90 and 90"),
    "lng -180.5": (location(0.0, -180.5), "lng must be between -180 and 180"),
    "lng 181": (location(0.0, 181), "lng must be between -180 and 180"),
    "address of 257 characters": (location(address="a" * 257), "at most 256 characters"),
    "address a number": (location(address=123), "address must be a string"),
    "address an object": (location(address={"city": "Delhi"}), "address must be a string"),
    "negative accuracy": (location(accuracy=-1), "accuracy"),
    "heading a string": (location(heading="north"), "heading"),
    "another parcel's id": (lambda s: location(parcel_id=other_parcel_id(s)), "parcel_id"),
    "another parcel's id as a string": (lambda s: location(parcel_id=str(other_parcel_id(s))), "parcel_id"),
    "parcel_id true": (lambda s: location(parcel_id=True), "parcel_id"),
}


@pytest.mark.gen_test
@pytest.mark.parametrize("case", ERRORS)
async def test_a_bad_message_gets_an_error_and_the_socket_stays_usable(world, case):
    s = await scene(world)
    await world.parcel(s.client, s.driver, status="in_transit")  # the "other parcel": this driver's too
    assert s.id == 1  # so `parcel_id: true` (== 1 in Python) really is the socket's parcel in disguise
    text, fragment = ERRORS[case]
    watcher = await subscribed(world, s.id, s.client)
    driver = await subscribed(world, s.id, s.driver)
    driver.write_message(text if isinstance(text, str) else text(s))
    await expect_error(driver, fragment)
    await still_usable(driver, watcher)  # and the refused message reached no one (the next one is this)


@pytest.mark.gen_test
async def test_boundary_values_are_accepted(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    for lat, lng in ((90, 180), (-90, -180), (0, 0)):
        await send_location(driver, lat, lng)
    echo = await send_location(driver, 1.5, 2.5, address="b" * 256)
    assert echo["location"]["address"] == "b" * 256


@pytest.mark.gen_test
@pytest.mark.parametrize("status", ["delivered", "cancelled"])
async def test_no_location_for_a_finished_parcel(world, status):
    s = await scene(world, status="assigned" if status == "cancelled" else "in_transit")
    driver = await subscribed(world, s.id, s.driver)
    watcher = await subscribed(world, s.id, s.client)
    changed = await world.api("POST", f"/api/parcels/{s.id}/status/",
                              s.client if status == "cancelled" else s.driver, body={"status": status})
    assert changed.code == 200, changed.body
    for ws in (driver, watcher):
        assert (await recv(ws))["status"] == status
    for _ in range(2):  # the socket stays open: it answers again
        driver.write_message(location())
        await expect_error(driver, status)
    await nothing_arrives(watcher)  # no refused location was broadcast


@pytest.mark.gen_test
async def test_a_driver_connecting_to_a_delivered_parcel_cannot_send(world):
    s = await scene(world, status="delivered")
    driver = await subscribed(world, s.id, s.driver)
    driver.write_message(location())
    await expect_error(driver, "delivered")


@pytest.mark.gen_test
async def test_the_eleventh_message_within_a_second_is_refused(world):
    s = await scene(world)
    watcher = await subscribed(world, s.id, s.client)
    driver = await subscribed(world, s.id, s.driver)
    for i in range(11):
        driver.write_message(location(20.0, i))
    # The refusal is the socket's own answer; the ten broadcasts reach it through the broker,
    # on a later loop turn, so the error may come first: what matters is that all come.
    answers = [await recv(driver)]
    first_accepted_before = time.monotonic()
    answers += [await recv(driver) for _ in range(10)]
    assert [a["location"]["lng"] for a in answers if a["type"] == "location_update"] == list(range(10)), answers
    errors = [a for a in answers if a["type"] == "error"]
    assert len(errors) == 1 and errors[0]["message"].startswith("too many messages"), answers
    for i in range(10):
        await expect_update(watcher, 20.0, i)
    await nothing_arrives(watcher)  # the 11th was not broadcast
    # The limit is a one-second window: once it has passed, the same socket is served again.
    # There is no event to await for "a second has passed", so this one wait is on the clock.
    await asyncio.sleep(max(0.0, first_accepted_before + 1.05 - time.monotonic()))
    await still_usable(driver, watcher)


@pytest.mark.gen_test
async def test_the_limit_counts_a_whole_second_not_a_burst(world):
    """Six frames, 0.6 s, five more: the eleventh within the second is refused, which a
    window shorter than a second (say 100 ms) would have let through."""
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    started = time.monotonic()
    for i in range(6):
        await send_location(driver, 20.0, i)
    await asyncio.sleep(0.6)
    for i in range(6, 10):
        await send_location(driver, 20.0, i)
    driver.write_message(location(20.0, 10))
    await expect_error(driver, "too many messages")
    assert time.monotonic() - started < 1.0  # all eleven were within one second


@pytest.mark.gen_test
async def test_a_frame_over_4_kib_closes_the_socket_with_1009(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    exactly = location(1.0, 2.0)
    driver.write_message(exactly + " " * (4096 - len(exactly)))  # 4096 bytes is still allowed
    await expect_update(driver, 1.0, 2.0)
    driver.write_message(exactly + " " * (4097 - len(exactly)))
    await expect_closed(driver, 1009)



@pytest.mark.gen_test
async def test_frames_that_are_refused_count_against_the_rate_limit_too(world):
    """Ten frames that are not JSON in a second, then a good fix: refused for the rate, so
    a peer cannot make the server answer without limit."""
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    for _ in range(10):
        driver.write_message("not json")
    for _ in range(10):
        await expect_error(driver, "not valid JSON")
    driver.write_message(location(20.0, 1.0))
    await expect_error(driver, "too many messages")


@pytest.mark.gen_test
async def test_a_frame_over_4_kib_closes_even_when_it_is_not_json(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    driver.write_message("x" * 4097)
    await expect_closed(driver, 1009)


@pytest.mark.gen_test
async def test_a_binary_frame_is_read_like_a_text_frame(world):
    """A binary frame arrives as bytes: one holding UTF-8 JSON (an address with non-ASCII
    letters) is a location like any other."""
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    frame = json.dumps({"type": "location_update", "lat": 1.0, "lng": 2.0, "address": "Chāndni Chowk"},
                       ensure_ascii=False).encode()
    driver.write_message(frame, binary=True)
    assert (await expect_update(driver, 1.0, 2.0))["location"]["address"] == "Chāndni Chowk"

# -- status changes and reassignment ------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_status_change_reaches_every_subscriber_and_delivered_stops_locations(world):
    s = await scene(world)
    sockets = [await subscribed(world, s.id, user) for user in (s.client, s.dispatcher, s.driver)]
    response = await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, body={"status": "delivered"})
    assert response.code == 200, response.body
    events = [await recv(ws) for ws in sockets]
    assert events[0] == events[1] == events[2]
    assert set(events[0]) == {"type", "parcel_id", "status", "timestamp"}
    assert (events[0]["type"], events[0]["parcel_id"], events[0]["status"]) == ("status", s.id, "delivered")
    assert_timestamp(events[0]["timestamp"])
    sockets[2].write_message(location())
    await expect_error(sockets[2], "delivered")


@pytest.mark.gen_test
async def test_reassignment_cuts_off_the_previous_driver_and_lets_the_new_one_in(world):
    s = await scene(world)
    new_driver = await world.user("driver")
    watcher = await subscribed(world, s.id, s.client)
    old = await subscribed(world, s.id, s.driver)
    await send_location(old, 28.6, 77.2, watcher)
    response = await world.api("POST", f"/api/parcels/{s.id}/assign/", s.dispatcher, body={"driver_id": new_driver.id})
    assert response.code == 200, response.body
    await expect_error(old, "no longer assigned")
    await expect_closed(old, 4403)
    status = await recv(watcher)
    assert (status["type"], status["status"]) == ("status", "in_transit"), status
    await rejected(world, s.id, world.token(s.driver), 4403)
    new = await subscribed(world, s.id, new_driver)
    echo = await send_location(new, 28.7, 77.3, watcher)
    assert echo["driver_id"] == str(new_driver.id)


@pytest.mark.gen_test(timeout=30)
async def test_reassignment_cuts_off_every_device_of_the_old_driver_and_keeps_its_last_position(world):
    s = await scene(world)
    new_driver = await world.user("driver")
    phone, tablet = await subscribed(world, s.id, s.driver), await subscribed(world, s.id, s.driver)
    await send_location(phone, 28.61, 77.21, tablet)
    await send_location(tablet, 28.62, 77.22, phone)  # the second accepted update: not sampled yet
    response = await world.api("POST", f"/api/parcels/{s.id}/assign/", s.dispatcher, body={"driver_id": new_driver.id})
    assert response.code == 200, response.body
    for device in (phone, tablet):
        await expect_error(device, "no longer assigned")
        await expect_closed(device, 4403)
    await world.app.hub.writer.flush()
    assert await last_location(world, s) == (28.62, 77.22)
    assert await history(world, s) == [(28.62, 77.22)]


@pytest.mark.gen_test(timeout=30)
async def test_a_token_issued_before_a_restart_still_works_after_it(world, db_server):
    s = await scene(world)
    token = world.token(s.client)
    async with another_server(world, db_server) as restarted:  # the same settings and secret, a new process
        ws = await restarted.socket(s.id, token)
        assert (await recv(ws))["type"] == "subscribed"
        me = await restarted.api("GET", "/api/me/", headers={"Authorization": f"Bearer {token}"})
        assert me.code == 200 and body(me)["id"] == s.client.id


@pytest.mark.gen_test(timeout=30)
@settings(ws_ping_interval=0.3, ws_ping_timeout=0.2)
async def test_a_client_that_never_answers_pings_is_closed_in_time(world):
    s = await scene(world)
    silent = await SlowReader.connect(world.port, f"parcel_id={s.id}&token={world.token(s.client)}")
    assert json.loads((await silent.frame())[1])["type"] == "subscribed"
    started = time.monotonic()
    assert (await silent.frame())[0] == 0x9  # a ping, which this client never answers
    assert (await silent.frame())[0] == 0x8  # so the server closes: a close frame...
    assert time.monotonic() - started < 0.3 + 0.2 + 0.5
    # ...and, since the client does not answer that either, drops it (Tornado waits 5 s for the reply)
    await until(lambda: world.app.hub.subscriber_count(s.id) == 0, within=8)


@pytest.mark.gen_test
async def test_a_location_racing_the_revocation_is_dropped_quietly(world, caplog):
    s = await scene(world)
    new_driver = await world.user("driver")
    old = await SlowReader.connect(world.port, f"parcel_id={s.id}&token={world.token(s.driver)}")
    assert json.loads((await old.frame())[1])["type"] == "subscribed"  # the parcel's only subscriber
    caplog.set_level(logging.ERROR)
    response = await world.api("POST", f"/api/parcels/{s.id}/assign/", s.dispatcher, body={"driver_id": new_driver.id})
    assert response.code == 200, response.body
    old.send_text(location())  # the phone has not read the revocation yet
    opcode, payload = await old.frame()
    assert opcode == 0x1 and json.loads(payload) == {"type": "error",
                                                     "message": "you are no longer assigned to this parcel"}
    opcode, payload = await old.frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 4403
    new = await subscribed(world, s.id, new_driver)
    await send_location(new, 28.7, 77.3)
    assert not caplog.records, caplog.text


# -- logs -------------------------------------------------------------------------------------------------


async def failing(*args: Any) -> None:
    raise RuntimeError("the database broke")


@pytest.mark.gen_test
async def test_no_token_reaches_the_log(world, caplog, monkeypatch):
    s = await scene(world)
    caplog.set_level(logging.DEBUG)
    good = world.token(s.client)
    ws = await subscribed(world, s.id, s.client)
    ws.close()
    secrets = [good]
    for kind in ("garbage", "expired", "not UTF-8"):
        token = BAD_TOKENS[kind](world, s.client)
        secrets.append(token.removesuffix("%ff"))
        await rejected(world, s.id, token, 4401)
    with pytest.raises(HTTPClientError):
        await world.socket(s.id, good, origin="https://evil.example")
    await rejected(world, "%ff", good, 4400)
    outsider = await world.user("client")
    secrets.append(world.token(outsider))
    await rejected(world, s.id, secrets[-1], 4403)
    # A handler that fails: Tornado's own log line would carry the URL, and so the token.
    secrets.append(world.token(s.dispatcher))
    monkeypatch.setattr(parcels, "get_parcels", failing)  # what the handshake reads through (models/lookups.py)
    ws = await world.socket(s.id, secrets[-1])
    assert await recv(ws) is None  # the server gave up on it
    monkeypatch.undo()
    assert (await world.api("POST", "/api/token/", body={"email": s.client.email, "password": "hunter2-secret"})).code \
        == 401
    secrets.append("hunter2-secret")
    lines = [record.getMessage() for record in caplog.records]
    assert any("uncaught exception" in line.lower() for line in lines), lines
    access = [line for line in lines if "/ws/tracking/" in line]
    assert any(line.startswith("101 GET /ws/tracking/ ") for line in access), lines
    assert any(line.startswith("403 GET /ws/tracking/ ") for line in access), lines
    for secret in secrets:  # not whole, not cut short, not even its signature
        for fragment in (secret, secret[:20], secret.rsplit(".", 1)[-1]):
            assert fragment not in caplog.text, (fragment, lines)


def vanish(ws: WebSocketClientConnection) -> None:
    """Drop the connection without a close handshake: the kernel answers the server with a TCP reset."""
    stream = ws.protocol.stream
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()


@pytest.mark.gen_test
async def test_a_subscriber_vanishing_mid_broadcast_is_not_logged_as_an_error(world, caplog):
    s = await scene(world)
    watcher = await subscribed(world, s.id, s.client)
    driver = await subscribed(world, s.id, s.driver)
    caplog.set_level(logging.ERROR)
    for i in range(5):
        doomed = await subscribed(world, s.id, s.dispatcher)
        # The location is on its way before the reset, so the server broadcasts to a connection
        # that the kernel already knows is gone: the write fails under the server's feet.
        driver.write_message(location(30.0, float(i)))
        vanish(doomed)
        await expect_update(driver, 30.0, float(i))
        await expect_update(watcher, 30.0, float(i))
        await until(lambda: world.app.hub.subscriber_count(s.id) == 2)
    gc.collect()  # an unretrieved failed write is reported when its future is collected
    assert not caplog.records, caplog.text
