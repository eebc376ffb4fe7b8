"""What a crowd does to the server (issue 16): a reconnect storm, sessions ending while
handshakes are in flight, bcrypt's queue under sign-ups, and a socket flooding big frames.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time

import pytest
from tornado.websocket import WebSocketClientConnection

from devtools.process import Server, app_env
from tests.conftest import TEST_SECRET, World, body, recv, settings
from tests.helpers import expect_update, own_database, scene, send_location, subscribed, until


async def opened(world: World, parcel_id: int | None, token: str, path: str = "/ws/tracking/") -> dict:
    """Open a socket and read how it ends up: its first message, then whatever follows within 3 s."""
    ws = await world.socket(parcel_id, token, path=path)
    first = await recv(ws, within=20)
    return {"ws": ws, "first": first}


async def fate(ws: WebSocketClientConnection, within: float = 3.0) -> int | None:
    """The socket's close code once the server closes it, or None if it stays open `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            message = await recv(ws, within=deadline - time.monotonic())
        except TimeoutError:
            return None
        if message is None:
            return ws.close_code
    return None


# -- a reconnect storm ---------------------------------------------------------------------


async def first_frame(port: int, query: str) -> tuple[int, bytes]:
    """A bare WebSocket handshake, as fast as a socket can make one (Tornado's client paces a
    storm by its own cost): the server's first frame's opcode and payload. Left open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws/tracking/?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size >= 126:
        size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8))
    return first & 0x0F, await reader.readexactly(size)


@pytest.mark.gen_test(timeout=180)
async def test_a_reconnect_storm_is_served_not_refused_as_a_database_outage(world, config, db_server):
    """1,500 pages reconnecting at once to a server that has just started (nothing known yet):
    every one is subscribed. One read per handshake queued 3,000 reads in the database, and
    those at the back passed their deadline and were closed with 1013 while it was fine."""
    owners = [await world.user("client") for _ in range(300)]
    parcels = [await world.parcel(owner) for owner in owners for _ in range(5)]
    env = app_env(MONGODB_URI=db_server, MONGODB_DB=config.mongodb_db, SECRET_KEY=TEST_SECRET,
                  DATA_DIR=str(config.data_dir))
    server = Server(env, "--no-demo").start()
    try:
        tokens = {owner.id: world.token(owner) for owner in owners}
        started = time.monotonic()
        frames = await asyncio.gather(*(first_frame(server.port, f"parcel_id={p['_id']}&token={tokens[p['owner_id']]}")
                                        for p in parcels))
        took = time.monotonic() - started
    finally:
        server.stop()
    refused = [payload for opcode, payload in frames if opcode != 1 or b'"subscribed"' not in payload]
    assert not refused, (f"{len(refused)} of {len(frames)} refused in {took:.1f} s", refused[:3])


@pytest.mark.gen_test
async def test_handshakes_for_one_user_and_parcel_share_their_reads(world):
    """Fifty sockets of the same watcher at once are all subscribed, and all see the next fix."""
    s = await scene(world)
    world.app.hub._users.clear()
    results = await asyncio.gather(*(opened(world, s.id, world.token(s.client)) for _ in range(50)))
    assert all(r["first"]["type"] == "subscribed" for r in results), [r["first"] for r in results][:3]
    driver = await subscribed(world, s.id, s.driver)
    await send_location(driver, 10.0, 20.0)
    for r in results:
        await expect_update(r["ws"], 10.0, 20.0)


# -- a session that ends while handshakes are in flight ------------------------------------------


async def ended_in_flight(own: World, pid: int, count: int, open_one, end) -> list[int | None]:
    """Freeze the database, open `count` sockets (each then waits for its read), `end` their
    session meanwhile, thaw the database; each socket's fate: its close code, or None when it
    is still open three seconds later. `end` is what the handler calls once its write is in:
    the write landed after the handshakes' reads, the event came before they registered."""
    os.kill(pid, signal.SIGSTOP)
    try:
        pending = [asyncio.ensure_future(open_one()) for _ in range(count)]
        await until(lambda: own.app.lookups.waiting == count)
        end()
    finally:
        os.kill(pid, signal.SIGCONT)
    return await asyncio.gather(*(settle(result) for result in await asyncio.gather(*pending)))


async def settle(result: dict) -> int | None:
    ws, first = result["ws"], result["first"]
    if first is not None and first["type"] == "error":
        first = await recv(ws)
    return ws.close_code if first is None else await fate(ws)


@pytest.mark.gen_test(timeout=60)
async def test_a_session_ended_during_tracking_handshakes_leaves_none_of_them_open(world, tmp_path):
    async with own_database(world, tmp_path) as (own, pid):
        s = await scene(own)
        token = own.token(s.client)
        fates = await ended_in_flight(own, pid, 30, lambda: opened(own, s.id, token),
                                      lambda: own.app.hub.sessions_ended(s.client.id))
        assert fates == [4401] * 30, fates


@pytest.mark.gen_test(timeout=60)
async def test_a_dispatcher_demoted_during_board_handshakes_keeps_no_board(world, tmp_path):
    async with own_database(world, tmp_path) as (own, pid):
        demoted = await own.user("dispatcher")
        token = own.token(demoted)
        fates = await ended_in_flight(own, pid, 8, lambda: opened(own, None, token, "/ws/dispatch/"),
                                      lambda: own.app.hub.sessions_ended(demoted.id))
        assert fates == [4401] * 8, fates


@pytest.mark.gen_test(timeout=60)
async def test_share_links_revoked_during_handshakes_leave_no_socket_open(world, tmp_path):
    async with own_database(world, tmp_path) as (own, pid):
        s = await scene(own)
        link = body(await own.api("POST", f"/api/parcels/{s.id}/share/", s.client))["token"]
        fates = await ended_in_flight(own, pid, 30, lambda: opened(own, s.id, link),
                                      lambda: own.app.hub.links_revoked(s.id))
        assert fates == [4401] * 30, fates


# -- bcrypt's queue is not the database's ------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
@settings(bcrypt_rounds=10, database_deadline=0.3)
async def test_sign_ups_waiting_for_bcrypt_are_not_answered_as_a_database_outage(world):
    """Twenty accounts created at once: each waits for the others' bcrypt (about 60 ms each on
    two cores), which used to count against the request's database deadline and answer 503."""
    boss = await world.user("dispatcher")
    answers = await asyncio.gather(*(
        world.api("POST", "/api/users/", boss, {"email": f"new{i}@example.test", "password": "long enough",
                                                 "role": "client"})
        for i in range(20)))
    assert [a.code for a in answers] == [201] * 20, [(a.code, a.body) for a in answers if a.code != 201]


# -- a flood of big frames -------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_flood_of_big_frames_is_refused_unparsed_and_closed(world):
    """60 KiB frames as fast as the socket takes them: the server refuses them for the rate
    without parsing each, and closes the socket (4429) instead of answering every one."""
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    fixes = [{"lat": 1.0, "lng": 2.0, "address": "x" * 230, "recorded_at": "2026-01-01T00:00:00.000Z"}] * 200
    frame = json.dumps({"type": "location_batch", "locations": fixes})
    assert 50_000 < len(frame) < 64 * 1024
    for _ in range(100):
        driver.write_message(frame)
    errors = 0
    while (message := await recv(driver)) is not None:
        assert message["type"] == "error", message
        errors += 1
    assert driver.close_code == 4429, (driver.close_code, driver.close_reason)
    assert errors <= 30, errors  # at most FLOOD_FACTOR × rate_limit answers, the last with the close
