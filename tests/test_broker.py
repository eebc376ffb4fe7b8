"""BROKER_URL: two server processes behind one Redis serve one parcel together, and keep
doing so across a Redis outage (realtime/broker.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from devtools.process import RedisServer, Server, app_env, run_cli
from realtime.broker import Broker, make_broker
from tests.conftest import location, recv


@pytest.fixture(scope="module")
def redis_url() -> str:
    server = RedisServer().start()
    yield server.url
    server.kill()


@dataclass
class Cluster:
    """Two `app.py serve` processes sharing one Redis (which the test may kill) and one database:
    a client c, drivers d and e, a dispatcher x, and one parcel of c's assigned to d."""

    redis: RedisServer
    first: Server
    second: Server
    parcel_id: int
    tokens: dict[str, str]

    def tracking(self, server: Server, token: str) -> str:
        return f"ws://127.0.0.1:{server.port}/ws/tracking/?parcel_id={self.parcel_id}&token={token}"

    def socket(self, server: Server, path: str, token: str) -> str:
        return f"ws://127.0.0.1:{server.port}{path}?token={token}"

    def stop(self) -> list[str]:
        """Stop both servers; what each printed."""
        return [self.first.stop(), self.second.stop()]


def populated(db_server: str, broker_url: str, tmp_path) -> tuple[dict[str, str], int]:
    """The environment of two processes on a database of their own, with a client (c), two
    drivers (d, e), a dispatcher (x) and a parcel of c's assigned to d; and that parcel's id."""
    env = app_env(MONGODB_URI=db_server, MONGODB_DB=f"broker_{uuid.uuid4().hex[:10]}", BROKER_URL=broker_url,
                  SECRET_KEY="s" * 48, DATA_DIR=str(tmp_path))
    for email, role in (("c@example.test", "client"), ("d@example.test", "driver"), ("e@example.test", "driver"),
                        ("x@example.test", "dispatcher")):
        assert run_cli("create-user", "--email", email, "--password", "password1", "--role", role,
                       env=env).returncode == 0
    parcel_id = int(run_cli("create-parcel", "--owner", "c@example.test", "--pickup", "28.6,77.2",
                            "--destination", "28.5,77.1", env=env).stdout)
    assert run_cli("assign", str(parcel_id), "d@example.test", env=env).returncode == 0
    return env, parcel_id


@pytest.fixture
def cluster(db_server, tmp_path) -> Cluster:
    server = RedisServer().start()
    env, parcel_id = populated(db_server, server.url, tmp_path)
    first, second = Server(env, "--no-demo").start(), Server(env, "--no-demo").start()
    try:
        tokens = {who: first.token(f"{who}@example.test", "password1") for who in "cdex"}
        yield Cluster(server, first, second, parcel_id, tokens)
    finally:
        for process in (first, second):
            process.stop()
        server.kill()


def test_two_processes_share_live_updates_status_and_revocation(db_server, redis_url, tmp_path):
    env, parcel_id = populated(db_server, redis_url, tmp_path)
    first, second = Server(env, "--no-demo").start(), Server(env, "--no-demo").start()
    try:
        tokens = {who: first.token(f"{who}@example.test", "password1") for who in "cdex"}

        async def scenario() -> None:
            def url(server: Server, who: str) -> str:
                return f"ws://127.0.0.1:{server.port}/ws/tracking/?parcel_id={parcel_id}&token={tokens[who]}"

            client = await websocket_connect(url(first, "c"))
            driver = await websocket_connect(url(second, "d"))
            assert (await recv(client))["type"] == (await recv(driver))["type"] == "subscribed"
            for lat in (28.61, 28.62, 28.63):
                driver.write_message(location(lat, 77.2))
            got = [await recv(client) for _ in range(3)]
            assert [m["location"]["lat"] for m in got] == [28.61, 28.62, 28.63]
            assert [(await recv(driver))["location"]["lat"] for _ in range(3)] == [28.61, 28.62, 28.63]
            assert {m["driver_id"] for m in got} == {str(me(first, tokens["d"])["id"])}

            # A late viewer on the first process gets the snapshot the second process produced.
            late = await websocket_connect(url(first, "c"))
            assert (await recv(late))["type"] == "subscribed"
            assert (await recv(late))["location"]["lat"] == 28.63

            status, _ = await asyncio.to_thread(first.api, "POST", f"/api/parcels/{parcel_id}/status/", tokens["d"],
                                                {"status": "picked_up"})
            assert status == 200
            assert (await recv(driver)) | {"timestamp": None} == {
                "type": "status", "parcel_id": parcel_id, "status": "picked_up", "timestamp": None}

            new_driver = me(first, tokens["e"])["id"]
            status, _ = await asyncio.to_thread(first.api, "POST", f"/api/parcels/{parcel_id}/assign/", tokens["x"],
                                                {"driver_id": new_driver})
            assert status == 200
            assert (await recv(driver))["type"] == "error"
            assert await asyncio.wait_for(driver.read_message(), 5) is None and driver.close_code == 4403
            assert (await recv(client))["type"] == "status"
            for ws in (client, late):
                ws.close()

        asyncio.run(scenario())
    finally:
        outputs = [first.stop(), second.stop()]
    assert not any("Traceback" in output for output in outputs), outputs


# -- a Redis outage ------------------------------------------------------------------
# Each test kills Redis, changes something through the first process meanwhile, starts
# Redis again on the same port, and checks the second process within a few seconds.

BACK_WITHIN = 6.0  # seconds from Redis starting again until the second process has caught up


def test_during_a_redis_outage_a_driver_and_a_viewer_on_one_process_get_every_fix(cluster):
    first, second = cluster.first, cluster.second

    async def scenario() -> None:
        client = await subscribed(cluster.tracking(first, cluster.tokens["c"]))
        driver = await subscribed(cluster.tracking(first, cluster.tokens["d"]))
        remote = await subscribed(cluster.tracking(second, cluster.tokens["x"]))
        cluster.redis.kill()
        lats = [round(28.7 + n / 1000, 4) for n in range(1, 16)]
        for lat in lats:
            driver.write_message(location(lat, 77.2))
            assert (await recv(client, 3))["location"]["lat"] == lat
            assert (await recv(driver, 3))["location"]["lat"] == lat
            await asyncio.sleep(0.12)  # within the socket's 10 messages a second
        cluster.redis.start()
        await crossing(driver, remote, BACK_WITHIN)  # the processes share fixes again

    asyncio.run(scenario())
    metrics = scrape(first)
    unpublished = re.search(r'^parcel_broker_unpublished_total\{kind="location"\} (\S+)$', metrics, re.M)
    assert unpublished and float(unpublished[1]) >= 15, metrics
    assert re.search(r"^parcel_broker_outages_total 1\.0$", metrics, re.M), metrics
    outputs = cluster.stop()
    assert not any("Traceback" in output for output in outputs), outputs
    for output in outputs:  # one warning when it went, one when it came back
        assert output.count("lost the broker") == 1 and output.count("the broker is back") == 1, output
    back = (r"the broker is back after [0-9.]+ s; "
            r"could not publish \d+ location(, \d+ board)? events \(delivered here only\)")
    assert re.search(back, outputs[0]), outputs[0]


def test_a_share_link_revoked_during_a_redis_outage_closes_its_socket_on_the_other_process(cluster):
    first, second, share = cluster.first, cluster.second, f"/api/parcels/{cluster.parcel_id}/share/"

    async def scenario() -> None:
        for step in ("picked_up", "in_transit"):  # a link shows the truck only once its parcel is on its way
            moved = await call(first, "POST", f"/api/parcels/{cluster.parcel_id}/status/", cluster.tokens["d"],
                               {"status": step})
            assert moved[0] == 200
        status, link = await call(first, "POST", share, cluster.tokens["c"])
        assert status == 201
        viewer = await subscribed(cluster.tracking(second, link["token"]))
        driver = await subscribed(cluster.tracking(first, cluster.tokens["d"]))
        cluster.redis.kill()
        assert (await call(first, "DELETE", share, cluster.tokens["c"]))[0] == 204
        status, fresh = await call(first, "POST", share, cluster.tokens["c"])  # a link made after the revocation
        assert status == 201
        newer = await subscribed(cluster.tracking(second, fresh["token"]))
        cluster.redis.start()
        messages, code = await closing(viewer, BACK_WITHIN)
        assert code == 4401 and {"type": "error", "message": "this link is no longer valid"} in messages, messages
        assert (await crossing(driver, newer, BACK_WITHIN))["driver_id"] is None  # the newer link still works

    asyncio.run(scenario())
    outputs = cluster.stop()
    assert not any("Traceback" in output for output in outputs), outputs


def test_a_password_changed_during_a_redis_outage_ends_the_users_sockets_on_the_other_process(cluster):
    first, second = cluster.first, cluster.second

    async def scenario() -> None:
        watcher = await subscribed(cluster.tracking(second, cluster.tokens["x"]))
        board = await subscribed(cluster.socket(second, "/ws/dispatch/", cluster.tokens["x"]), "board")
        driver = await subscribed(cluster.tracking(first, cluster.tokens["d"]))
        cluster.redis.kill()
        status, _ = await call(first, "POST", "/api/me/password/", cluster.tokens["x"],
                               {"password": "password1", "new_password": "password2"})
        assert status == 200
        cluster.redis.start()
        for ws in (watcher, board):
            messages, code = await closing(ws, BACK_WITHIN)
            assert code == 4401 and {"type": "error", "message": "your session has ended; log in again"} in messages
        late = await websocket_connect(cluster.tracking(second, cluster.tokens["x"]))  # the old token: refused
        assert (await closing(late, 5))[1] == 4401
        token = await asyncio.to_thread(first.token, "x@example.test", "password2")
        await crossing(driver, await subscribed(cluster.tracking(second, token)), BACK_WITHIN)

    asyncio.run(scenario())
    outputs = cluster.stop()
    assert not any("Traceback" in output for output in outputs), outputs


def test_a_driver_replaced_during_a_redis_outage_can_no_longer_broadcast_on_the_other_process(cluster):
    first, second, parcel_id = cluster.first, cluster.second, cluster.parcel_id

    async def scenario() -> None:
        successor = (await call(first, "GET", "/api/me/", cluster.tokens["e"]))[1]["id"]
        watcher = await subscribed(cluster.tracking(second, cluster.tokens["c"]))
        driver = await subscribed(cluster.tracking(second, cluster.tokens["d"]))
        route = await websocket_connect(cluster.socket(second, "/ws/driver/", cluster.tokens["d"]))
        assert (await recv(route))["parcels"] == [parcel_id]
        new_route = await websocket_connect(cluster.socket(second, "/ws/driver/", cluster.tokens["e"]))
        assert (await recv(new_route))["parcels"] == []
        cluster.redis.kill()
        status, _ = await call(first, "POST", f"/api/parcels/{parcel_id}/assign/", cluster.tokens["x"],
                               {"driver_id": successor})
        assert status == 200
        cluster.redis.start()
        messages, code = await closing(driver, BACK_WITHIN)
        assert code == 4403 and messages[-1]["type"] == "error", messages
        assert (await next_of(route, "parcels", BACK_WITHIN))["parcels"] == []
        assert (await next_of(new_route, "parcels", BACK_WITHIN))["parcels"] == [parcel_id]
        assert (await next_of(watcher, "status", BACK_WITHIN))["status"] == "assigned"
        route.write_message(location(28.9, 77.2))  # the replaced driver's fix goes nowhere
        assert (await next_of(route, "error", 5))["message"]
        assert not [m for m in await received(watcher, 1.0) if m["type"] == "location_update"]

    asyncio.run(scenario())
    outputs = cluster.stop()
    assert not any("Traceback" in output for output in outputs), outputs


# -- helpers -------------------------------------------------------------------------


def me(server: Server, token: str) -> dict:
    status, answer = server.api("GET", "/api/me/", token)
    assert status == 200
    return answer


async def call(server: Server, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    """An API call (off the event loop); an empty answer (204) is None."""
    def request() -> tuple[int, Any]:
        sent = urllib.request.Request(server.url + path, method=method,
                                      data=None if body is None else json.dumps(body).encode(),
                                      headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(sent, timeout=10) as response:
                status, data = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        return status, json.loads(data) if data else None

    return await asyncio.to_thread(request)


def scrape(server: Server) -> str:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        return response.read().decode()


async def subscribed(url: str, first: str = "subscribed") -> WebSocketClientConnection:
    """A socket whose first message is `first`."""
    ws = await websocket_connect(url)
    assert (await recv(ws))["type"] == first
    return ws


async def next_of(ws: WebSocketClientConnection, kind: str, within: float) -> dict[str, Any]:
    """The next message of this type, within `within` seconds (others are skipped)."""
    deadline = time.monotonic() + within
    while True:
        message = await recv(ws, max(0.01, deadline - time.monotonic()))
        assert message is not None, f"closed ({ws.close_code}) before a {kind} message"
        if message["type"] == kind:
            return message


async def received(ws: WebSocketClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every message the socket receives within `seconds`."""
    deadline, messages = time.monotonic() + seconds, []
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await recv(ws, left)
        except TimeoutError:
            break
        if message is None:
            break
        messages.append(message)
    return messages


async def closing(ws: WebSocketClientConnection, within: float) -> tuple[list[dict[str, Any]], int | None]:
    """Every message until the server closes the socket, and its close code; fails after `within` seconds."""
    deadline, messages = time.monotonic() + within, []
    while True:
        try:
            message = await recv(ws, max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            pytest.fail(f"the socket is still open after {within} s; it received {messages}")
        if message is None:
            return messages, ws.close_code
        messages.append(message)


async def crossing(driver: WebSocketClientConnection, watcher: WebSocketClientConnection,
                   within: float) -> dict[str, Any]:
    """Send fixes on `driver` (three a second) until one reaches `watcher` on the other process;
    that fix, or a failure after `within` seconds."""
    deadline, lat = time.monotonic() + within, 28.8
    while time.monotonic() < deadline:
        lat = round(lat + 0.001, 4)
        driver.write_message(location(lat, 77.2))
        try:
            while True:
                message = await recv(watcher, 0.33)
                if message is None:
                    pytest.fail(f"the watcher's socket closed ({watcher.close_code})")
                if message["type"] == "location_update":
                    return message
        except TimeoutError:
            continue
    pytest.fail(f"no fix reached the other process within {within} s")


# -- the in-process broker: what every broker does for this process's own hub -----------------


@pytest.mark.gen_test
async def test_the_local_broker_delivers_on_the_next_loop_turn_in_order(caplog):
    delivered: list[int] = []

    def deliver(event: dict[str, Any]) -> None:
        if event["n"] == 1:
            raise RuntimeError("a bug in delivering one event")
        delivered.append(event["n"])

    broker = make_broker("", deliver)
    assert isinstance(broker, Broker)
    await broker.start()
    for n in range(4):
        broker.publish({"kind": "location", "n": n})
    assert delivered == []  # publishing never delivers inside the publisher's call
    await asyncio.sleep(0)
    assert delivered == [0, 2, 3]  # the failing one is logged as such, the others still delivered
    assert [r.getMessage() for r in caplog.records if r.name == "parcel.broker"] == [
        "could not deliver a location event"]
    broker.publish({"kind": "location", "n": 4})
    await broker.close()  # what is still due is delivered before the broker goes
    assert delivered == [0, 2, 3, 4]
