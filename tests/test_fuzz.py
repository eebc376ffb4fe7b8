"""A property-based fuzzer (Hypothesis) against the real server: socket frames, query
strings and API bodies (docs/security.md, "Every input").

For every generated input: no 500, no traceback in the log, every refusal is a clear
message (`{"error": ...}` over HTTP, an `error` message on the socket), and the socket
stays usable: the next valid location is broadcast. 2,000 examples per target. The rate
limits are raised for the fuzzed sockets so the run takes seconds, not minutes; the
limits have tests of their own.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from tests.conftest import location, recv, settings
from tests.helpers import scene, subscribed

EXAMPLES = 2_000
FUZZ = hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                           suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
numbers_and_junk = st.one_of(st.floats(), st.integers(), st.text(max_size=12), st.booleans(), st.none(),
                             st.just(2**70), st.just(-(2**64)))
location_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["location_update", "location_batch", "LOCATION_UPDATE", ""]),
     "lat": numbers_and_junk, "lng": numbers_and_junk},
    optional={"address": st.one_of(st.text(max_size=300), json_values), "parcel_id": numbers_and_junk,
              "accuracy": numbers_and_junk, "heading": numbers_and_junk, "speed": numbers_and_junk},
)
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    location_like.map(lambda d: json.dumps(d)),
)
QUERY_KEYS = ["limit", "before", "status", "active", "since", "q", "part", "next", "parcel_id"]
queries = st.one_of(
    st.lists(st.tuples(st.sampled_from(QUERY_KEYS), st.text(max_size=30)), max_size=4).map(urlencode),
    st.text(max_size=60).map(lambda t: quote(t, safe="=&%")),
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={
        "pickup": st.one_of(location_like, json_values), "destination": st.one_of(location_like, json_values),
        "owner_id": numbers_and_junk, "driver_id": numbers_and_junk, "status": st.one_of(st.text(), json_values),
        "email": st.one_of(st.text(max_size=40), json_values), "password": st.one_of(st.text(max_size=80), json_values),
        "role": st.one_of(st.sampled_from(["client", "driver", "dispatcher"]), st.text(max_size=10)),
        "refresh": st.one_of(st.text(max_size=40), json_values),
    }).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
)


def run(io_loop, caplog, strategy, one) -> None:
    """Run `one` (a coroutine function) on 2,000 examples of `strategy`, then check the log
    holds no error and no traceback."""

    @FUZZ
    @given(strategy)
    def check(example: Any) -> None:
        io_loop.run_sync(lambda: one(example))

    caplog.set_level(logging.WARNING)
    check()
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, bad[:3]


def clear(response: Any, context: Any) -> None:
    """No 500; a refusal with its message."""
    assert response.code < 500, (context, response.code)
    if response.code >= 400:
        assert isinstance(json.loads(response.body)["error"], str), context


@settings(rate_limit=10**9, user_messages_per_second=10**9)
def test_socket_frames(io_loop, world, caplog):
    s = io_loop.run_sync(lambda: scene(world))
    watcher = io_loop.run_sync(lambda: subscribed(world, s.id, s.client))
    driver = io_loop.run_sync(lambda: subscribed(world, s.id, s.driver))
    count = iter(range(1, 10**9))

    async def one(frame: str | bytes) -> None:
        driver.write_message(frame, binary=isinstance(frame, bytes))
        answer = await recv(driver)
        assert answer is not None, f"the socket closed on {frame!r}"
        if answer["type"] == "error":
            assert isinstance(answer["message"], str) and answer["message"]
        else:  # it was a valid location after all: the watcher has it too
            assert answer["type"] == "location_update" and await recv(watcher) == answer
        n = next(count)  # and the next valid message is broadcast to everyone
        driver.write_message(location(n % 90, 0.0))
        echo = await recv(driver)
        assert echo["type"] == "location_update" and echo["location"]["lat"] == n % 90, echo
        assert await recv(watcher) == echo

    run(io_loop, caplog, frames, one)


async def fetch(world, path: str, user=None, method: str = "GET", raw: bytes | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["Authorization"] = f"Bearer {world.token(user)}"
    request = HTTPRequest(f"http://127.0.0.1:{world.port}{path}", method=method, headers=headers,
                          body=raw if method == "POST" else None, follow_redirects=False, request_timeout=10)
    try:
        return await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        return e.response


def test_query_strings(io_loop, world, caplog):
    s = io_loop.run_sync(lambda: scene(world))
    paths = ["/api/parcels/", f"/api/parcels/{s.id}/locations/", "/api/me/"]
    pages = ["/dispatch", "/parcels", "/driver", "/login", f"/parcels/{s.id}/track"]
    owners = {"/dispatch": s.dispatcher, "/parcels": s.client, "/driver": s.driver}

    async def one(query: str) -> None:
        for path in paths:
            clear(await fetch(world, f"{path}?{query}", s.dispatcher), (path, query))
        for path in pages:
            response = await world.page(f"{path}?{query}", owners.get(path, s.client))
            assert response.code < 500, (path, query, response.code)

    run(io_loop, caplog, queries, one)


def test_api_bodies(io_loop, world, caplog):
    s = io_loop.run_sync(lambda: scene(world, status="assigned"))
    targets = [("/api/parcels/", s.client), ("/api/parcels/", s.dispatcher), ("/api/users/", s.dispatcher),
               (f"/api/parcels/{s.id}/status/", s.client), (f"/api/parcels/{s.id}/assign/", s.dispatcher),
               ("/api/token/", None), ("/api/token/refresh/", None)]

    async def one(raw: bytes) -> None:
        for path, user in targets:
            clear(await fetch(world, path, user, "POST", raw), (path, raw))

    run(io_loop, caplog, bodies, one)
