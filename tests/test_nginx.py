"""deploy/nginx.conf, for real: Debian's nginx with TLS in front of the real server
(docs/protocol.md, "Operating it"). `make test` installs nginx like chromium.

Through nginx: the API and `wss://` work; the app sees the client's scheme (its login
and `_xsrf` cookies are `Secure`) and address (TRUSTED_PROXIES), the origin check passes
for the page's own origin, and nginx's access log has no token, not even a share link's.
`/metrics` is not served through it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from devtools.process import ROOT, Server, app_env, free_port, run_cli
from tests.conftest import location

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLIENT_ADDRESS = "127.0.0.2"  # a client that is not the proxy (both are on loopback here)


def certificate(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


def start_nginx(folder: Path, app_port: int, port: int, key: Path, cert: Path) -> subprocess.Popen:
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    for old, new in (("127.0.0.1:8000", f"127.0.0.1:{app_port}"), ("listen 443 ssl", f"listen 127.0.0.1:{port} ssl"),
                     ("/etc/ssl/certs/track.example.com.pem", str(cert)),
                     ("/etc/ssl/private/track.example.com.key", str(key)),
                     ("/var/log/nginx/tracking.log", str(folder / "tracking.log"))):
        assert old in site, old  # the deployed file still has what this test replaces
        site = site.replace(old, new)
    (folder / "site.conf").write_text(site)
    (folder / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{ access_log off; client_body_temp_path {folder}; proxy_temp_path {folder};\n"
        f"  include {folder}/site.conf; }}\n")
    process = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("nginx did not start")


def stop_nginx(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)  # a fast shutdown: open sockets are simply closed
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_wss_and_the_api_through_nginx_with_tls(tmp_path):
    env = app_env(DATA_DIR=str(tmp_path / "data"), TRUSTED_PROXIES="127.0.0.1")
    for email, role in (("c@example.test", "client"), ("d@example.test", "driver")):
        assert run_cli("create-user", "--email", email, "--password", "password1", "--role", role,
                       env=env).returncode == 0
    parcel_id = run_cli("create-parcel", "--owner", "c@example.test", "--pickup", "28.6,77.2",
                        "--destination", "28.5,77.1", env=env).stdout.strip()
    assert run_cli("assign", parcel_id, "d@example.test", env=env).returncode == 0
    key, cert = certificate(tmp_path)
    server = Server(env, "--no-demo").start()
    port = free_port()
    nginx = start_nginx(tmp_path, server.port, port, key, cert)
    tls = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{port}"

    async def through_nginx() -> dict:
        client = AsyncHTTPClient()

        async def call(path: str, **kwargs) -> object:
            request = HTTPRequest(base + path, ssl_options=tls, network_interface=CLIENT_ADDRESS,
                                  follow_redirects=False, **kwargs)
            try:
                return await client.fetch(request)
            except HTTPClientError as e:
                return e.response

        tokens = {}
        for who in ("c", "d"):
            r = await call("/api/token/", method="POST", body=json.dumps({"email": f"{who}@example.test",
                                                                        "password": "password1"}))
            assert r.code == 200, r.body
            tokens[who] = json.loads(r.body)["access"]
        login_page = await call("/login")
        assert "Secure" in login_page.headers["Set-Cookie"]  # the _xsrf cookie too
        xsrf = login_page.headers["Set-Cookie"].split("_xsrf=")[1].split(";")[0]
        logged_in = await call("/login", method="POST", headers={"Cookie": f"_xsrf={xsrf}"},
                               body=f"_xsrf={xsrf}&email=c@example.test&password=password1")
        assert logged_in.code == 302
        login_cookie = next(h for h in logged_in.headers.get_list("Set-Cookie") if h.startswith("user="))

        ws = f"wss://127.0.0.1:{port}/ws/tracking/?parcel_id={parcel_id}&token="
        origin = {"Origin": base}  # the page's own origin, as a browser sends it
        sockets = []
        for who in ("c", "d"):
            sock = await websocket_connect(HTTPRequest(ws + tokens[who], ssl_options=tls, headers=origin,
                                                       network_interface=CLIENT_ADDRESS))
            assert json.loads(await asyncio.wait_for(sock.read_message(), 5))["type"] == "subscribed"
            sockets.append(sock)
        watcher, driver = sockets
        driver.write_message(location(28.61, 77.21))
        echo = json.loads(await asyncio.wait_for(driver.read_message(), 5))
        assert json.loads(await asyncio.wait_for(watcher.read_message(), 5)) == echo
        for sock in sockets:  # nginx logs a socket when it ends
            sock.close()
            assert await asyncio.wait_for(sock.read_message(), 5) is None
        log = tmp_path / "tracking.log"
        for _ in range(50):
            if log.read_text().count("/ws/tracking/") >= 2:
                break
            await asyncio.sleep(0.1)
        return {"cookie": login_cookie, "tokens": tokens}

    try:
        seen = asyncio.run(through_nginx())
    finally:
        stop_nginx(nginx)
        output = server.stop()
    assert "Secure" in seen["cookie"]  # the app knew the client came over https
    assert f"({CLIENT_ADDRESS})" in output and "/ws/tracking/" in output, output  # and from where
    log = (tmp_path / "tracking.log").read_text()
    assert "/ws/tracking/" in log and CLIENT_ADDRESS in log, log
    for token in seen["tokens"].values():
        assert token not in log and token[:20] not in log and token not in output


def test_nginx_logs_no_share_token_and_serves_no_metrics(tmp_path):
    """Without TRUSTED_PROXIES (the app then sees every request come from nginx's loopback
    address): a share link's page and history leave no token in nginx's access log, and
    nginx answers /metrics itself with 404, while /healthz still reaches the app."""
    key, cert = certificate(tmp_path)
    server = Server(app_env(DATA_DIR=str(tmp_path / "data"))).start()  # with the demo data
    nginx = None
    try:
        client = server.token("client@demo.test", "demo-pass")
        _, parcels = server.api("GET", "/api/parcels/", client)
        _, link = server.api("POST", f"/api/parcels/{parcels[0]['id']}/share/", client)
        port = free_port()
        nginx = start_nginx(tmp_path, server.port, port, key, cert)
        tls = ssl.create_default_context(cafile=str(cert))

        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=tls, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert status(f"/t/{link['token']}") == 200 and status(f"/t/{link['token']}/locations") == 200
        assert status("/metrics") == 404 and status("/metrics/") == 404
        assert status("/healthz") == 200
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        server.stop()
    log = (tmp_path / "tracking.log").read_text()
    assert '"GET /t/[token]"' in log and '"GET /t/[token]/locations"' in log, log
    assert link["token"] not in log, log


def test_nginx_gzips_scripts_styles_pages_and_json(tmp_path):
    """Through nginx, a client that accepts gzip gets Leaflet (144 KiB), the stylesheets, a
    page and the API's JSON compressed, by nginx itself; a client that does not, plain bodies."""
    key, cert = certificate(tmp_path)
    server = Server(app_env(DATA_DIR=str(tmp_path / "data"))).start()  # with the demo data
    nginx = None
    try:
        dispatcher = server.token("dispatcher@demo.test", "demo-pass")
        port = free_port()
        nginx = start_nginx(tmp_path, server.port, port, key, cert)
        tls = ssl.create_default_context(cafile=str(cert))

        def get(path: str, **headers: str) -> tuple[int, Message, bytes]:
            request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers)
            with urllib.request.urlopen(request, context=tls, timeout=10) as r:  # urllib never unpacks gzip
                return r.status, r.headers, r.read()

        leaflet = (ROOT / "static" / "vendor" / "leaflet" / "leaflet.js").read_bytes()
        status, headers, body = get("/static/vendor/leaflet/leaflet.js", **{"Accept-Encoding": "gzip"})
        assert status == 200 and headers.get("Content-Encoding") == "gzip", dict(headers)
        assert len(body) < len(leaflet) / 3 and gzip.decompress(body) == leaflet
        assert "Accept-Encoding" in headers.get("Vary", "")
        # nginx weakens the ETag of what it compresses; the app's own gzip would keep it strong.
        assert headers["ETag"].startswith("W/"), dict(headers)
        status, headers, body = get("/static/vendor/leaflet/leaflet.js")
        assert status == 200 and "Content-Encoding" not in headers and body == leaflet

        for path, extra, kind in (("/static/vendor/leaflet/leaflet.css", {}, "text/css"),
                                  ("/static/css/app.css", {}, "text/css"),
                                  ("/login", {}, "text/html"),
                                  ("/api/parcels/", {"Authorization": f"Bearer {dispatcher}"}, "application/json")):
            status, headers, body = get(path, **{"Accept-Encoding": "gzip", **extra})
            assert status == 200 and headers["Content-Type"].startswith(kind), (path, dict(headers))
            assert headers.get("Content-Encoding") == "gzip", (path, dict(headers))
            assert len(body) < len(gzip.decompress(body)), path
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        server.stop()
