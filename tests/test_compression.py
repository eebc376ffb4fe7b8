"""Responses are gzipped for clients that ask (issue 17): the static files (Leaflet is
144 KiB), the pages and the JSON API, over a real HTTP server; sockets work as before."""

from __future__ import annotations

import gzip
import json

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect

from devtools.process import ROOT
from tests.conftest import location, recv

LEAFLET = ROOT / "static" / "vendor" / "leaflet" / "leaflet.js"
GZIP = {"Accept-Encoding": "gzip"}


async def fetch(world, path: str, headers: dict[str, str] | None = None, **kwargs) -> HTTPResponse:
    """The response as it came over the wire: not decompressed, and no Accept-Encoding unless given."""
    request = HTTPRequest(f"http://127.0.0.1:{world.port}{path}", headers=headers or {}, decompress_response=False,
                          request_timeout=10, **kwargs)
    try:
        return await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        return e.response


@pytest.mark.gen_test
async def test_leaflet_is_gzipped_when_asked_and_plain_otherwise(world):
    original = LEAFLET.read_bytes()
    zipped = await fetch(world, "/static/vendor/leaflet/leaflet.js", GZIP)
    assert zipped.code == 200
    assert zipped.headers.get("Content-Encoding") == "gzip"
    assert "Accept-Encoding" in zipped.headers.get("Vary", "")  # caches keep both versions apart
    assert len(zipped.body) < len(original) / 3, len(zipped.body)  # about 43 KiB of 144
    assert gzip.decompress(zipped.body) == original  # streamed in chunks, whole when unpacked

    plain = await fetch(world, "/static/vendor/leaflet/leaflet.js")
    assert plain.code == 200 and "Content-Encoding" not in plain.headers
    assert plain.body == original

    # A conditional request still gets its 304 (the ETag is the file's, whichever encoding).
    again = await fetch(world, "/static/vendor/leaflet/leaflet.js", {**GZIP, "If-None-Match": zipped.headers["Etag"]})
    assert again.code == 304 and not again.body


@pytest.mark.gen_test
async def test_stylesheets_pages_and_json_are_gzipped(world):
    dispatcher = await world.user("dispatcher")
    client = await world.user("client")
    for _ in range(12):  # a list of parcels well over the 1 KiB below which nothing is compressed
        await world.parcel(client)
    token = world.token(dispatcher)
    for path, headers, kind in (
        ("/static/css/app.css", GZIP, "text/css"),
        ("/api/parcels/", {**GZIP, "Authorization": f"Bearer {token}"}, "application/json"),
        ("/login", GZIP, "text/html"),
    ):
        response = await fetch(world, path, headers)
        assert response.code == 200, path
        assert response.headers["Content-Type"].startswith(kind), path
        assert response.headers.get("Content-Encoding") == "gzip", path
        unpacked = gzip.decompress(response.body)
        assert len(response.body) < len(unpacked), path
        if kind == "application/json":
            assert len(json.loads(unpacked)) == 12


@pytest.mark.gen_test
async def test_a_socket_asked_with_accept_encoding_works_as_before(world):
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    sockets = []
    for user in (client, driver):
        request = HTTPRequest(f"ws://127.0.0.1:{world.port}/ws/tracking/?parcel_id={parcel['_id']}"
                              f"&token={world.token(user)}", headers=GZIP, request_timeout=10)
        ws = await websocket_connect(request)
        assert ws.headers.get("Content-Encoding") is None  # the 101 answer is not "compressed"
        assert (await recv(ws))["type"] == "subscribed"
        sockets.append(ws)
    watcher, sender = sockets
    sender.write_message(location(28.6, 77.2))
    assert (await recv(watcher))["location"]["lat"] == 28.6
    for ws in sockets:
        ws.close()
