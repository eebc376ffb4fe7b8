"""The app under test and the load generator's fixture.

`App` is one `app.py serve --no-demo --data-dir <data>` (devtools/process.py) and its
embedded database's pid. `seed()` makes the fixture in that data dir's database with the
product's own models before the app starts: each parcel has its own driver (a user sends
at most `Settings.user_messages_per_second` over all its sockets) and two viewers, its
owner and a dispatcher watching it, with an access token for everyone (auth.tokens). A
user holds at most `Settings.user_sockets` sockets, so a client owns and a dispatcher
watches that many parcels at most. The first dispatcher watches nothing: the benchmark
uses it for the dispatcher's board and for the subscribers that never read.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import database
from auth import passwords, tokens
from devtools.process import Server
from models import parcels, users
from models.access import User
from settings import Settings

PASSWORD = "bench-pass-1"


def db_pid(data: Path) -> int:
    """The embedded database's pid, as models/embedded.py records it in the data dir."""
    return int(json.loads((data / "db-server.json").read_text())["pid"])


class App:
    """`python app.py serve --no-demo --data-dir <data>`, and its database's pid."""

    def __init__(self, env: dict[str, str], data: Path, name: str = "app") -> None:
        self.server = Server(env, "--no-demo", "--data-dir", str(data))
        self.data, self.name = data, name

    def start(self, timeout: float = 90) -> App:
        """Once it listens: it sets up its database (and broker) before it listens."""
        self.server.start(timeout=timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    @property
    def db_pid(self) -> int:
        return db_pid(self.data)

    @property
    def pids(self) -> str:
        """loadgen's `--pid`: the app's and its database's."""
        return f"{self.pid},{self.db_pid}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws/tracking/"

    def sockets_open(self) -> int:
        with urllib.request.urlopen(self.server.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("parcel_sockets_open{"))

    async def wait_idle(self, extra: int = 0, limit_s: float = 20) -> None:
        """Until the last phase's sockets are gone (a user's sockets are limited: the next phase reuses them)."""
        for _ in range(int(limit_s / 0.2)):
            if (n := await asyncio.to_thread(self.sockets_open) - extra) <= 0:
                return
            await asyncio.sleep(0.2)
        print(f"   (still {n} sockets open on {self.name} after {limit_s:.0f} s)")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM; what it printed goes to <data>/<name>-<pid>.log."""
        if self.server.process is None or self.server.process.poll() is not None:
            return
        try:
            self.server.stop(timeout=timeout)
        except AssertionError as e:
            print(f"   {self.name} did not stop cleanly: {str(e)[:300]}")
        (self.data / f"{self.name.replace(' ', '-')}-{self.pid}.log").write_text(self.server.output())


@dataclass
class Fixture:
    parcels: list[dict[str, Any]] = field(default_factory=list)  # loadgen's: parcel_id, driver_token, viewer_tokens
    users: int = 0
    dispatcher_token: str = ""  # the board's (and the never-reading subscribers')
    seconds: float = 0.0

    def write(self, path: Path, ws_url: str, count: int | None = None) -> Path:
        path.write_text(json.dumps({"ws_url": ws_url, "parcels": self.parcels[:count]}))
        return path


async def seed(settings: Settings, count: int) -> Fixture:
    """`count` parcels with their drivers and viewers and everyone's token, in the database of
    `settings.data_dir` (started here and stopped again: the app starts it afresh)."""
    started = time.monotonic()
    fixture = Fixture()
    password_hash = await passwords.hash_password(PASSWORD, settings.bcrypt_rounds)
    per_user = settings.user_sockets

    def token(user: User) -> str:
        return tokens.issue(user, "access", settings.access_token_ttl, settings.secret_key)

    async with database(settings) as db:
        async def user(email: str, role: str) -> User:
            fixture.users += 1
            return await users.create_user(db, email=email, password_hash=password_hash, role=role)

        fixture.dispatcher_token = token(await user("dispatcher@bench.test", "dispatcher"))
        groups = range(-(-count // per_user))
        clients = [await user(f"client{g}@bench.test", "client") for g in groups]
        viewers = [[token(clients[g]), token(await user(f"watcher{g}@bench.test", "dispatcher"))] for g in groups]

        async def parcel(i: int) -> dict[str, Any]:
            driver = await user(f"driver{i}@bench.test", "driver")
            lat, lng = 28.5 + (i % 100) / 500, 77.1 + (i // 100) / 500
            made = await parcels.create_parcel(
                db, owner_id=clients[i // per_user].id, pickup={"lat": lat, "lng": lng, "address": f"pickup {i}"},
                destination={"lat": lat + 0.05, "lng": lng + 0.05, "address": f"destination {i}"})
            await parcels.assign_driver(db, made["_id"], driver.id)
            return {"parcel_id": made["_id"], "driver_token": token(driver), "viewer_tokens": viewers[i // per_user]}

        for first in range(0, count, 100):
            fixture.parcels += await asyncio.gather(*(parcel(i) for i in range(first, min(count, first + 100))))
    fixture.seconds = time.monotonic() - started
    return fixture
