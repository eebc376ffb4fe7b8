"""Helpers the socket tests share: arranging a parcel with its people, observing what
sockets receive, reading back what was stored, a second app on the same database, and
an app on a database of its own.

Every wait is bounded; "nothing arrives" is a short bounded wait (QUIET) whose reason
is given where it is used. Fixtures stay in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import signal
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.websocket import WebSocketClientConnection

from app import make_app
from models.access import User
from models.embedded import EmbeddedDatabase
from tests.conftest import World, body, location, recv

ISO_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
QUIET = 0.3  # seconds: how long "nothing arrives" waits (everything else here answers within milliseconds)


# -- arranging -------------------------------------------------------------------------


@dataclasses.dataclass
class Scene:
    """A parcel with its owning client, its assigned driver and a dispatcher."""

    client: User
    driver: User
    dispatcher: User
    parcel: dict[str, Any]

    @property
    def id(self) -> int:
        return self.parcel["_id"]


async def scene(world: World, status: str = "in_transit") -> Scene:
    client, driver, dispatcher = [await world.user(role) for role in ("client", "driver", "dispatcher")]
    return Scene(client, driver, dispatcher, await world.parcel(client, driver, status=status))


# -- observing ---------------------------------------------------------------------------


async def expect_update(ws: WebSocketClientConnection, lat: float, lng: float) -> dict[str, Any]:
    """The next message is the broadcast of the location (lat, lng)."""
    got = await recv(ws)
    assert got is not None and got["type"] == "location_update", got
    assert (got["location"]["lat"], got["location"]["lng"]) == (lat, lng), got
    return got


async def send_location(ws: WebSocketClientConnection, lat: float, lng: float, *watchers: WebSocketClientConnection,
                        **fields: Any) -> dict[str, Any]:
    """Send a location from `ws` and see its broadcast come back to it and reach every watcher."""
    ws.write_message(location(lat, lng, **fields))
    echo = await expect_update(ws, lat, lng)
    for watcher in watchers:
        assert await recv(watcher) == echo
    return echo


async def expect_error(ws: WebSocketClientConnection, fragment: str = "") -> str:
    """The next message is `{"type": "error", "message": ...}` mentioning `fragment`; returns the message."""
    got = await recv(ws)
    assert got is not None and set(got) == {"type", "message"} and got["type"] == "error", got
    assert isinstance(got["message"], str) and fragment in got["message"], got
    return got["message"]


async def expect_closed(ws: WebSocketClientConnection, code: int) -> None:
    assert await recv(ws) is None, "the socket should have been closed"
    assert ws.close_code == code, (ws.close_code, ws.close_reason)


async def nothing_arrives(*sockets: WebSocketClientConnection) -> None:
    """Wait QUIET seconds (on all the sockets at once) and fail if a message or a close comes meanwhile."""

    async def quiet(ws: WebSocketClientConnection) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await recv(ws, within=QUIET)

    await asyncio.gather(*map(quiet, sockets))


async def still_usable(driver_ws: WebSocketClientConnection, *watchers: WebSocketClientConnection) -> None:
    """After an error the driver's socket still sends, and it and the watchers still receive."""
    await send_location(driver_ws, 12.9716, 77.5946, *watchers, address="Bengaluru")


async def rejected(world: World, parcel_id: Any, token: str | None, code: int) -> tuple[str, str]:
    """Open a socket that must be refused: an error message first, then `code`. Returns message and reason."""
    ws = await world.socket(parcel_id, token)
    message = await expect_error(ws)
    await expect_closed(ws, code)
    return message, ws.close_reason


async def subscribed(world: World, parcel_id: int, user: User, **kwargs: Any) -> WebSocketClientConnection:
    """Open a socket for `user` and read its `subscribed` message, checking its exact shape."""
    ws = await world.socket(parcel_id, world.token(user), **kwargs)
    got = await recv(ws)
    parcel = body(await world.api("GET", f"/api/parcels/{parcel_id}/", user))
    assert isinstance(got.pop("stops_before", 0), int), got  # when the hub knows the parcel's place on its route
    assert got == {"type": "subscribed", "parcel_id": parcel_id, "role": user.role, "status": parcel["status"]}
    return ws


def assert_timestamp(text: str) -> None:
    """ISO-8601 UTC with milliseconds and Z, and close to now."""
    assert ISO_TIMESTAMP.match(text), text
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 30, text


async def parcel_json(world: World, scene: Scene) -> dict[str, Any]:
    """The parcel as the API shows it, after queued samples are written."""
    await world.app.hub.writer.flush()
    response = await world.api("GET", f"/api/parcels/{scene.id}/", scene.client)
    assert response.code == 200, response.body
    return body(response)


async def history(world: World, scene: Scene) -> list[tuple[float, float]]:
    """The parcel's sampled history as (lat, lng) pairs, oldest first, after queued samples are written."""
    await world.app.hub.writer.flush()
    response = await world.api("GET", f"/api/parcels/{scene.id}/locations/", scene.client)
    assert response.code == 200, response.body
    return [(p["lat"], p["lng"]) for p in body(response)["locations"]]


async def last_location(world: World, scene: Scene) -> tuple[float, float] | None:
    last = (await parcel_json(world, scene))["last_location"]
    return None if last is None else (last["lat"], last["lng"])


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for a server-side condition that no message announces (such as a socket's close being handled)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def another_server(world: World, db_server: str, **changes: Any) -> AsyncIterator[World]:
    """A second app on the same database, as after a restart, served on its own port; stopped on
    exit. `changes`: Settings fields it has otherwise than the test's app (a broker, say)."""
    app = make_app(dataclasses.replace(world.app.config, **changes), db_server)
    await app.start()
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        yield World(app, port)
    finally:
        server.stop()
        await server.close_all_connections()
        await app.stop()


async def socket_closed_by_server(world: World, scene: Scene, ws: WebSocketClientConnection) -> None:
    """Close `ws` and wait until the server has handled the close (its on_close has run)."""
    before = world.app.hub.subscriber_count(scene.id)
    ws.close()
    assert await recv(ws) is None
    await until(lambda: world.app.hub.subscriber_count(scene.id) == before - 1)


@asynccontextmanager
async def own_database(world: World, tmp_path) -> AsyncIterator[tuple[World, int]]:
    """An app on a database of its own (so stopping that database touches no other test);
    yields its World and the database's pid."""
    embedded = EmbeddedDatabase(tmp_path / "own")
    uri = embedded.start()
    pid = json.loads((tmp_path / "own" / "db-server.json").read_text())["pid"]
    app = make_app(dataclasses.replace(world.app.config), uri)
    await app.start()
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        yield World(app, port), pid
    finally:
        os.kill(pid, signal.SIGCONT)
        server.stop()
        await server.close_all_connections()
        await app.stop()
        embedded.stop()


class SlowReader:
    """A bare WebSocket client that reads only when told, like a phone whose incoming frames are still in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, query: str) -> SlowReader:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws/tracking/?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (opcode, payload); server frames are not masked."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(size), 5)
