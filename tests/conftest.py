"""Shared fixtures: one real embedded database server per test session, an app per test.

Each test gets its own database name on that server (dropped afterwards) and its
own IOLoop (pytest-tornado); the app's AsyncMongoClient is made inside that loop.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import tornado.web
from pymongo import MongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

from app import Application, make_app
from auth import passwords, tokens
from models import parcels, users
from models.access import User
from models.embedded import EmbeddedDatabase
from settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-" + "x" * 40
PASSWORD = "correct horse"
XSRF = "deadbeef"


@pytest.fixture(scope="session")
def db_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URI of a SecantusDB server started once for the whole session."""
    embedded = EmbeddedDatabase(tmp_path_factory.mktemp("embedded"))
    uri = embedded.start()
    yield uri
    embedded.stop()


@pytest.fixture
def config(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for one test: its own database name, fast bcrypt, and whatever the test
    asks for with `@settings(...)`."""
    return Settings(**{
        "data_dir": tmp_path,
        "mongodb_db": f"test_{uuid.uuid4().hex[:12]}",
        "secret_key": TEST_SECRET,
        "bcrypt_rounds": 4,
        "sample_flush_interval": 0.01,
        **getattr(request, "param", {}),
    })


def settings(**overrides: Any):
    """Run the decorated test with these Settings fields changed."""
    label = ",".join(f"{k}={v}" for k, v in overrides.items())
    return pytest.mark.parametrize("config", [overrides], indirect=True, ids=[label])


@pytest.fixture
def app(io_loop, config: Settings, db_server: str) -> Application:
    application = make_app(config, db_server)
    io_loop.run_sync(application.start)
    yield application

    io_loop.run_sync(application.stop)
    with MongoClient(db_server) as client:
        client.drop_database(config.mongodb_db)


class World:
    """Makes users, tokens and parcels straight through models/, for arranging tests."""

    def __init__(self, app: Application, port: int) -> None:
        self.app = app
        self.port = port
        self._n = 0

    async def user(self, role: str, email: str | None = None, name: str = "") -> User:
        self._n += 1
        email = email or f"{role}{self._n}@example.test"
        password_hash = await passwords.hash_password(PASSWORD, 4)
        return await users.create_user(self.app.db, email=email, password_hash=password_hash, role=role, name=name)

    def token(self, user: User, token_type: str = "access", ttl: int = 300) -> str:
        return tokens.issue(user, token_type, ttl, TEST_SECRET)

    async def parcel(self, owner: User, driver: User | None = None, status: str = "pending") -> dict[str, Any]:
        parcel = await parcels.create_parcel(
            self.app.db, owner_id=owner.id,
            pickup={"lat": 28.61, "lng": 77.23, "address": "India Gate"},
            destination={"lat": 28.55, "lng": 77.20, "address": "Hauz Khas"},
        )
        if driver is not None:
            parcel, _ = await parcels.assign_driver(self.app.db, parcel["_id"], driver.id)
        for step in path_to(status):
            parcel = await parcels.set_status(self.app.db, parcel["_id"], step)
        return parcel

    async def api(self, method: str, path: str, user: User | None = None, body: Any = None,
                  headers: dict[str, str] | None = None, raw: bytes | None = None) -> HTTPResponse:
        """An API call over real HTTP; returns the response whatever its status."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if user is not None:
            all_headers["Authorization"] = f"Bearer {self.token(user)}"
        payload = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if payload is None and method == "POST":
            payload = b""
        request = HTTPRequest(f"http://127.0.0.1:{self.port}{path}", method=method, headers=all_headers,
                              body=payload, request_timeout=10)
        try:
            return await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            return e.response

    async def page(self, path: str, user: User | None = None, method: str = "GET", form: dict | None = None,
                   xsrf: bool = True) -> HTTPResponse:
        """A page request as a browser makes it: the login cookie, the XSRF cookie and field, no redirects followed."""
        cookies = [f"_xsrf={XSRF}"]
        if user is not None:
            session = f"{user.id}:{user.session}"
            cookies.append("user=" + tornado.web.create_signed_value(TEST_SECRET, "user", session).decode())
        payload = None
        if method == "POST":
            payload = urlencode({**({"_xsrf": XSRF} if xsrf else {}), **(form or {})})
        try:
            return await AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{self.port}{path}", method=method, body=payload, follow_redirects=False,
                headers={"Cookie": "; ".join(cookies)}, request_timeout=10,
            )
        except HTTPClientError as e:
            return e.response

    async def socket(self, parcel_id: Any, token: str | None, origin: str | None = None,
                     path: str = "/ws/tracking/", **more: Any) -> WebSocketClientConnection:
        """A socket to `path`; `more`: other query arguments (`since`, `epoch`)."""
        query = f"parcel_id={parcel_id}" if parcel_id is not None else ""
        if token is not None:
            query += f"&token={token}"
        if more:
            query += "&" + urlencode(more)
        headers = {"Origin": origin} if origin else {}
        request = HTTPRequest(f"ws://127.0.0.1:{self.port}{path}?{query}", headers=headers, request_timeout=10)
        return await websocket_connect(request)

    async def watch(self, parcel: dict[str, Any], user: User) -> WebSocketClientConnection:
        """A socket that has been accepted: `subscribed` (and any snapshot) already read."""
        ws = await self.socket(parcel["_id"], self.token(user))
        first = await recv(ws)
        assert first["type"] == "subscribed", first
        if (await parcels.get_parcel(self.app.db, parcel["_id"])).get("last_location") or \
                self.app.hub.latest_location(parcel["_id"]):
            snapshot = await recv(ws)
            assert snapshot["type"] == "location_update", snapshot
        return ws


def path_to(status: str) -> list[str]:
    """The moves through POST /status that take an assigned (or pending) parcel to `status`,
    read from the lifecycle's own table."""
    path: list[str] = []
    while status in parcels.TRANSITIONS:
        path.insert(0, status)
        sources = parcels.TRANSITIONS[status]
        status = next((s for s in ("assigned", "pending") if s in sources), min(sources))
    return path


def claims(user: User, **changes: Any) -> dict[str, Any]:
    """The claims of an access token for `user`, with some changed (to forge tokens with)."""
    now = int(time.time())
    return {"sub": str(user.id), "role": user.role, "type": "access", "iat": now, "exp": now + 300,
            "jti": "x" * 32, **changes}


def location(lat: float = 28.6139, lng: float = 77.209, **fields: Any) -> str:
    """A driver's location_update frame."""
    return json.dumps({"type": "location_update", "lat": lat, "lng": lng, **fields})


async def recv(ws: WebSocketClientConnection, within: float = 5.0, *, numbered: bool = False) -> dict[str, Any] | None:
    """The next message as JSON (None once the socket has closed); fails after `within` seconds.

    A parcel's numbering (docs/protocol.md, "Recovery on reconnect") is checked on every message
    and taken off, unless `numbered`: `subscribed`'s `epoch` (a string) and `offset`, and each
    message's `offset`, a positive integer above the last this socket saw for its parcel."""
    message = await asyncio.wait_for(ws.read_message(), within)
    if message is None:
        return None
    got = json.loads(message)
    if isinstance(got, dict) and ("offset" in got or "epoch" in got):
        seen: dict[Any, int] = ws.__dict__.setdefault("_offsets_seen", {})
        offset, parcel_id = got["offset"], got.get("parcel_id")
        assert isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0, got
        if got["type"] == "subscribed":
            assert isinstance(got["epoch"], str) and got["epoch"], got
            if not got.get("recovered"):  # else the missed messages, up to this offset, follow
                seen[parcel_id] = offset
        else:
            assert offset > seen.get(parcel_id, 0), (got, seen)
            seen[parcel_id] = offset
        if not numbered:
            del got["offset"]
            got.pop("epoch", None)
    return got


def refused(response: HTTPResponse, status: int, context: Any = None) -> str:
    """An API refusal: this status and a body of exactly `{"error": <a message>}`; returns the message."""
    assert response.code == status, (context, response.code, response.body)
    answer = json.loads(response.body)
    assert set(answer) == {"error"} and isinstance(answer["error"], str) and answer["error"].strip(), (context, answer)
    return answer["error"]


def body(response: HTTPResponse) -> Any:
    return json.loads(response.body)


@pytest.fixture
def world(app: Application, http_server, http_port: int) -> World:
    return World(app, http_port)
