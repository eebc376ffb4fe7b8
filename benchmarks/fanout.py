"""Fan-out, memory and persistence figures for the tracking socket (`make bench`).

Runs the real server (`app.py serve`) against a fresh embedded database and drives it
with real sockets from this process. The machine is shared and noisy, so read the
ratios within one run rather than the absolute numbers:

1. fan-out: one driver, N watchers; time from a send until every watcher has it.
2. memory: the server's resident memory per idle open socket.
3. a subscriber that never reads: the others' fan-out latency with and without it.
4. persistence: 50 drivers at 10 updates a second each, with every update written
   (LOCATION_SAMPLE_EVERY=1), every 5th (the default) and none: batching the writes
   should keep broadcast latency about the same in all three.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tornado.websocket import websocket_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auth import passwords, tokens  # noqa: E402
from models import parcels, users  # noqa: E402
from models.db import Database  # noqa: E402
from models.embedded import EmbeddedDatabase  # noqa: E402
from tests.process import Server, app_env  # noqa: E402

SECRET = "bench-" + "s" * 40


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def seed(uri: str, name: str, drivers: int, watchers: int) -> tuple[list[str], list[str], list[int]]:
    """Drivers with a parcel each, and watchers (dispatchers) for them; returns tokens and parcel ids."""
    db = Database(uri, name)
    await db.ensure_indexes()
    password_hash = await passwords.hash_password("bench-pass", 4)
    client = await users.create_user(db, email="owner@bench.test", password_hash=password_hash, role="client")
    driver_tokens, parcel_ids = [], []
    for i in range(drivers):
        driver = await users.create_user(db, email=f"d{i}@bench.test", password_hash=password_hash, role="driver")
        parcel = await parcels.create_parcel(db, owner_id=client.id, pickup={"lat": 28.6, "lng": 77.2, "address": ""},
                                             destination={"lat": 28.5, "lng": 77.1, "address": ""})
        await parcels.assign_driver(db, parcel["_id"], driver.id)
        driver_tokens.append(tokens.issue(driver, "access", 3600, SECRET))
        parcel_ids.append(parcel["_id"])
    # One user may hold at most 100 sockets (realtime/limits.py): watchers take turns among several.
    watcher_tokens = []
    for i in range(watchers):
        dispatcher = await users.create_user(db, email=f"x{i}@bench.test", password_hash=password_hash,
                                             role="dispatcher")
        watcher_tokens.append(tokens.issue(dispatcher, "access", 3600, SECRET))
    await db.close()
    return driver_tokens, watcher_tokens, parcel_ids


def turns(tokens_: list[str], count: int) -> list[str]:
    """`count` tokens, the users taking turns."""
    return [tokens_[i % len(tokens_)] for i in range(count)]


async def open_socket(port: int, parcel_id: int, token: str):
    ws = await websocket_connect(f"ws://127.0.0.1:{port}/ws/tracking/?parcel_id={parcel_id}&token={token}",
                                 max_message_size=4096)
    assert json.loads(await ws.read_message())["type"] == "subscribed"
    return ws


async def receive(ws, lat: float) -> None:
    """Read until the update with this latitude arrives (skipping a snapshot sent on connect)."""
    while True:
        message = json.loads(await ws.read_message())
        if message.get("type") == "location_update" and message["location"]["lat"] == lat:
            return


async def fanout(port: int, driver_token: str, watcher_tokens: list[str], parcel_id: int, watchers: int,
                 updates: int = 20, address: str = "") -> list[float]:
    """Latency from send until the last of `watchers` sockets has the update."""
    sockets = [await open_socket(port, parcel_id, token) for token in turns(watcher_tokens, watchers)]
    driver = await open_socket(port, parcel_id, driver_token)
    latencies = []
    for i in range(updates):
        lat = round(28.6 + i / 1000, 6)
        start = time.perf_counter()
        driver.write_message(json.dumps({"type": "location_update", "lat": lat, "lng": 77.2, "address": address}))
        await asyncio.gather(*(receive(ws, lat) for ws in sockets))
        latencies.append(time.perf_counter() - start)
        await receive(driver, lat)
        await asyncio.sleep(0.11)  # stay under the 10-a-second limit
    for ws in [*sockets, driver]:
        ws.close()
    return latencies


async def never_reads(port: int, parcel_id: int, token: str) -> asyncio.StreamWriter:
    """A subscriber that completes its handshake and then reads nothing, ever."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws/tracking/?parcel_id={parcel_id}&token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.pause_reading()
    return writer


async def many_drivers(port: int, driver_tokens: list[str], watcher_token: str, parcel_ids: list[int],
                       seconds: float = 5.0) -> list[float]:
    """Every driver sends 10 updates a second; one watcher per parcel measures the delay."""
    pairs = [(await open_socket(port, pid, token), await open_socket(port, pid, watcher_token))
             for token, pid in zip(driver_tokens, parcel_ids, strict=True)]
    latencies: list[float] = []

    async def drive(driver, watcher) -> None:
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline:
            lat = round(28.6 + i / 1e4, 6)
            start = time.perf_counter()
            driver.write_message(json.dumps({"type": "location_update", "lat": lat, "lng": 77.2}))
            await receive(watcher, lat)
            latencies.append(time.perf_counter() - start)
            await receive(driver, lat)
            i += 1
            await asyncio.sleep(max(0.0, 0.105 - (time.perf_counter() - start)))

    await asyncio.gather(*(drive(d, w) for d, w in pairs))
    for d, w in pairs:
        d.close()
        w.close()
    return latencies


def serve(uri: str, name: str, sample_every: str) -> Server:
    env = app_env(MONGODB_URI=uri, MONGODB_DB=name, SECRET_KEY=SECRET, LOCATION_SAMPLE_EVERY=sample_every,
                  DATA_DIR=tempfile.mkdtemp())
    return Server(env, "--no-demo").start()


def main() -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-"))
    embedded = EmbeddedDatabase(data)
    uri = embedded.start()
    try:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        driver_tokens, watcher_tokens, parcel_ids = asyncio.run(seed(uri, name, drivers=50, watchers=12))
        watcher = watcher_tokens[0]

        print("1. fan-out: one driver, N watchers (latency until the last watcher has it)")
        server = serve(uri, name, "5")
        try:
            base = None
            for n in (10, 100, 500):
                lat = asyncio.run(fanout(server.port, driver_tokens[0], watcher_tokens, parcel_ids[0], n))
                p50 = pct(lat, 0.5)
                base = base or p50
                print(f"   {n:4d} watchers: p50 {p50:7.2f} ms  p95 {pct(lat, 0.95):7.2f} ms  "
                      f"({p50 / base:5.1f}x the 10-watcher p50, {n // 10}x the watchers)")

            print("2. memory: server RSS per idle open socket")

            async def hold(count: int) -> int:
                before = rss_kib(server.process.pid)
                sockets = [await open_socket(server.port, parcel_ids[1], token)
                           for token in turns(watcher_tokens, count)]
                await asyncio.sleep(0.5)
                after = rss_kib(server.process.pid)
                for ws in sockets:
                    ws.close()
                return after - before

            grown = asyncio.run(hold(1000))
            print(f"   1000 sockets: +{grown / 1024:.1f} MiB, {grown / 1000:.1f} KiB a socket")

            print("3. a subscriber that never reads: the others' latency, 10 watchers, 60 updates of 250 bytes")

            async def with_and_without() -> tuple[list[float], list[float]]:
                address = "x" * 250
                alone = await fanout(server.port, driver_tokens[2], watcher_tokens, parcel_ids[2], 10, 60, address)
                stalled = await never_reads(server.port, parcel_ids[2], watcher_tokens[-1])
                beside = await fanout(server.port, driver_tokens[2], watcher_tokens, parcel_ids[2], 10, 60, address)
                stalled.close()
                return alone, beside

            alone, beside = asyncio.run(with_and_without())
            print(f"   without it: p50 {pct(alone, 0.5):6.2f} ms  p95 {pct(alone, 0.95):6.2f} ms;  "
                  f"with it: p50 {pct(beside, 0.5):6.2f} ms  p95 {pct(beside, 0.95):6.2f} ms  "
                  f"({pct(beside, 0.5) / pct(alone, 0.5):.2f}x; it is closed with 1008 once 1 MiB waits for it)")
        finally:
            server.stop()

        print("4. persistence: 50 drivers x 10 updates/s, broadcast latency by LOCATION_SAMPLE_EVERY")
        results = {}
        for every in ("1", "5", "1000000"):
            server = serve(uri, name, every)
            try:
                lat = asyncio.run(many_drivers(server.port, driver_tokens, watcher, parcel_ids))
            finally:
                server.stop()
            results[every] = lat
            label = {"1": "every update", "5": "every 5th", "1000000": "none"}[every]
            print(f"   written {label:>12}: {len(lat) / 5:6.0f} updates/s  p50 {pct(lat, 0.5):6.2f} ms  "
                  f"p95 {pct(lat, 0.95):6.2f} ms  mean {statistics.mean(lat) * 1000:6.2f} ms")
        ratio = pct(results["1"], 0.5) / pct(results["1000000"], 0.5)
        print(f"   p50 with every update written / with none written: {ratio:.2f}x")
    finally:
        embedded.stop()


if __name__ == "__main__":
    main()
