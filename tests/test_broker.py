"""BROKER_URL: two server processes behind one Redis serve one parcel together."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid

import pytest
import redis
from tornado.websocket import websocket_connect

from tests.conftest import location, recv
from tests.process import Server, app_env, free_port, run_cli


@pytest.fixture(scope="module")
def redis_url() -> str:
    """A real redis-server of our own on a free loopback port (make test installs it)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: `make test` installs it"
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    client.close()
    yield url
    process.terminate()
    process.wait(10)


def test_two_processes_share_live_updates_status_and_revocation(db_server, redis_url, tmp_path):
    env = app_env(MONGODB_URI=db_server, MONGODB_DB=f"broker_{uuid.uuid4().hex[:10]}", BROKER_URL=redis_url,
                  SECRET_KEY="s" * 48, DATA_DIR=str(tmp_path))
    for email, role in (("c@example.test", "client"), ("d@example.test", "driver"), ("e@example.test", "driver"),
                        ("x@example.test", "dispatcher")):
        assert run_cli("create-user", "--email", email, "--password", "password1", "--role", role,
                       env=env).returncode == 0
    parcel_id = int(run_cli("create-parcel", "--owner", "c@example.test", "--pickup", "28.6,77.2",
                            "--destination", "28.5,77.1", env=env).stdout)
    assert run_cli("assign", str(parcel_id), "d@example.test", env=env).returncode == 0
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


def me(server: Server, token: str) -> dict:
    status, answer = server.api("GET", "/api/me/", token)
    assert status == 200
    return answer
