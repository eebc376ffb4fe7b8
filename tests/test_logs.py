"""What the real `serve` prints (docs/protocol.md, "The tracking socket": no token in any log line).

The in-process tests read the app's log records; this one reads everything the
server process writes, access log, warnings and all, after the ways a token or a
password could reach it: a socket accepted, refused for its token, refused for its
parcel, refused for its origin, a failed login, a share link's page and history, and an
unsubscribe link.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from devtools.process import Server, app_env, run_cli

PASSWORD = "password1"


def test_nothing_secret_in_anything_serve_prints(tmp_path):
    env = app_env(DATA_DIR=str(tmp_path))
    for email, role in (("boss@example.test", "dispatcher"), ("c@example.test", "client"),
                        ("other@example.test", "client")):
        made = run_cli("create-user", "--email", email, "--password", PASSWORD, "--role", role, env=env)
        assert made.returncode == 0, made.stderr
    server = Server(env, "--no-demo").start()
    try:
        client, other = server.token("c@example.test", PASSWORD), server.token("other@example.test", PASSWORD)
        _, me = server.api("GET", "/api/me/", client)
        _, parcel = server.api("POST", "/api/parcels/", client, {"pickup": {"lat": 28.6, "lng": 77.2},
                                                                 "destination": {"lat": 28.5, "lng": 77.1}})
        wrong_password = "not-the-password-7d3f"
        assert server.api("POST", "/api/token/", body={"email": "c@example.test", "password": wrong_password})[0] == 401
        _, link = server.api("POST", f"/api/parcels/{parcel['id']}/share/", client)
        with urllib.request.urlopen(link["url"], timeout=10) as page:
            assert page.status == 200
        assert server.api("GET", f"/t/{link['token']}/locations")[0] == 200
        unsubscribe = "u" * 30  # an unsubscribe link's token (models/mail.py), unknown or not
        with pytest.raises(urllib.error.HTTPError) as unknown:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/u/{unsubscribe}", timeout=10)
        assert unknown.value.code == 404

        async def sockets() -> None:
            base = f"ws://127.0.0.1:{server.port}/ws/tracking/?parcel_id={parcel['id']}&token="
            ws = await websocket_connect(base + client)
            assert json.loads(await asyncio.wait_for(ws.read_message(), 5))["type"] == "subscribed"
            ws.close()
            for token, code in ((client[:-4] + "AAAA", 4401), (other, 4403)):
                ws = await websocket_connect(base + token)
                while await asyncio.wait_for(ws.read_message(), 5) is not None:
                    pass
                assert ws.close_code == code
            with pytest.raises(HTTPClientError):
                await websocket_connect(HTTPRequest(base + client, headers={"Origin": "https://evil.example"}))

        asyncio.run(sockets())
    finally:
        output = server.stop()
    assert me["email"] == "c@example.test"
    assert "/ws/tracking/" in output and "POST /api/token/" in output, output  # the access log is there
    assert "GET /t/[token] " in output and "GET /t/[token]/locations " in output, output
    assert "GET /u/[token] " in output, output
    for secret in (client, other, wrong_password, PASSWORD, link["token"], unsubscribe):
        for fragment in (secret, secret[:16], secret.rsplit(".", 1)[-1]):
            assert fragment not in output, (fragment, output)
