"""The load generator's fixture, made the way a customer would: through the HTTP API.

One dispatcher comes from the command line (`app.py create-user --role dispatcher`), as
on a fresh install; everything else goes through the API it opens: clients, drivers and
more dispatchers (`POST /api/users/`), parcels (`POST /api/parcels/`), assignments
(`POST /api/parcels/<id>/assign/`) and access tokens (`POST /api/token/`).

Each parcel has its own driver (a user sends at most 20 messages a second over all its
sockets, a socket 10) and two viewers: its owner (a client owning at most 100 parcels)
and a dispatcher (watching at most 100 of them): one user may hold at most 100 sockets.
The first dispatcher (the one from the command line) watches nothing in the fixture; the
benchmark uses it for the dispatcher's board and for the subscribers that never read.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from tests.process import Server, run_cli

PASSWORD = "bench-pass-1"
SOCKETS_PER_USER = 100  # settings.py: Settings.user_sockets
CONCURRENCY = 16  # API calls in flight while building the fixture


@dataclass
class Fixture:
    parcels: list[dict[str, Any]] = field(default_factory=list)  # loadgen's: parcel_id, driver_token, viewer_tokens
    dispatcher_email: str = ""
    dispatcher_token: str = ""  # the board's (and the never-reading subscribers')
    seconds: float = 0.0
    requests: int = 0

    def write(self, path: Path, ws_url: str, count: int | None = None) -> Path:
        parcels = self.parcels if count is None else self.parcels[:count]
        path.write_text(json.dumps({"ws_url": ws_url, "parcels": parcels}))
        return path


class Api:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = AsyncHTTPClient(force_instance=True, max_clients=CONCURRENCY)
        self.requests = 0

    async def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = HTTPRequest(self.base + path, method=method, headers=headers,
                              body=None if body is None else json.dumps(body), request_timeout=60)
        for attempt in range(5):
            try:
                self.requests += 1
                response = await self.http.fetch(request)
                return json.loads(response.body)
            except HTTPClientError as e:
                if e.code in (429, 503) and attempt < 4:
                    await asyncio.sleep(1 + attempt)
                    continue
                detail = e.response.body.decode(errors="replace")[:200] if e.response is not None else ""
                raise RuntimeError(f"{method} {path} -> {e.code} {detail}") from None
        raise AssertionError("unreachable")

    async def token(self, email: str) -> str:
        return (await self.call("POST", "/api/token/", body={"email": email, "password": PASSWORD}))["access"]

    def close(self) -> None:
        self.http.close()


async def gather_limited(coros: list, limit: int = CONCURRENCY) -> list:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro):
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def build(server: Server, data_dir: Path, parcels: int, *, progress: bool = True) -> Fixture:
    """`parcels` parcels, each with its own driver and two viewers, with access tokens for all."""
    started = time.monotonic()
    fixture = Fixture(dispatcher_email="dispatcher@bench.test")
    done = run_cli("create-user", "--email", fixture.dispatcher_email, "--password", PASSWORD, "--role", "dispatcher",
                   "--name", "Bench dispatcher", "--data-dir", str(data_dir), env=server.env)
    if done.returncode != 0:
        raise RuntimeError(f"create-user failed: {done.stderr.strip()}")
    api = Api(server.url)
    try:
        boss = fixture.dispatcher_token = await api.token(fixture.dispatcher_email)
        groups = -(-parcels // SOCKETS_PER_USER)

        async def user(email: str, role: str) -> int:
            body = {"email": email, "password": PASSWORD, "role": role, "name": email.split("@")[0]}
            return (await api.call("POST", "/api/users/", boss, body))["id"]

        clients = await gather_limited([user(f"client{g}@bench.test", "client") for g in range(groups)])
        watchers = [f"watcher{g}@bench.test" for g in range(groups)]
        await gather_limited([user(email, "dispatcher") for email in watchers])
        client_tokens = await gather_limited([api.token(f"client{g}@bench.test") for g in range(groups)])
        watcher_tokens = await gather_limited([api.token(email) for email in watchers])

        async def parcel(i: int) -> dict[str, Any]:
            g = i // SOCKETS_PER_USER
            email = f"driver{i}@bench.test"
            driver_id = await user(email, "driver")
            lat, lng = 28.5 + (i % 100) / 500, 77.1 + (i // 100) / 500
            created = await api.call("POST", "/api/parcels/", boss, {
                "owner_id": clients[g], "pickup": {"lat": lat, "lng": lng, "address": f"pickup {i}"},
                "destination": {"lat": lat + 0.05, "lng": lng + 0.05, "address": f"destination {i}"}})
            await api.call("POST", f"/api/parcels/{created['id']}/assign/", boss, {"driver_id": driver_id})
            return {"parcel_id": created["id"], "driver_token": await api.token(email),
                    "viewer_tokens": [client_tokens[g], watcher_tokens[g]]}

        batch = 500
        for first in range(0, parcels, batch):
            fixture.parcels += await gather_limited([parcel(i) for i in range(first, min(parcels, first + batch))])
            if progress:
                print(f"   fixture: {len(fixture.parcels):,}/{parcels:,} parcels "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        fixture.requests = api.requests
        api.close()
    fixture.seconds = time.monotonic() - started
    return fixture
