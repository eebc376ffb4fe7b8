"""Operating it (docs/protocol.md, "Operating it"): health, metrics, a database that
stops answering under a live drive (a real SIGSTOP of a real embedded database), and
SIGTERM's 10 s even then."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from ipaddress import ip_network

import pytest
from tornado.websocket import websocket_connect

from devtools.process import Server, app_env
from models.embedded import _alive
from tests.conftest import ROOT, body, location, recv, refused, settings
from tests.helpers import expect_closed, expect_error, own_database, scene, send_location, subscribed


@pytest.mark.gen_test
async def test_healthz_says_what_answers(world):
    r = await world.api("GET", "/healthz")
    assert r.code == 200 and body(r) == {"status": "ok", "database": "ok", "broker": "off"}
    assert r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test
async def test_metrics_count_sockets_messages_broadcasts_and_samples(world):
    s = await scene(world)
    watcher = await subscribed(world, s.id, s.client)
    driver = await subscribed(world, s.id, s.driver)
    for n in range(5):  # the fifth is sampled
        await send_location(driver, 28.0 + n / 100, 77.0, watcher)
    await world.app.hub.writer.flush()
    r = await world.api("GET", "/metrics")
    assert r.code == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.body.decode()
    for line in ('parcel_sockets_open{kind="tracking",role="client"} 1.0',
                 'parcel_sockets_open{kind="tracking",role="driver"} 1.0',
                 'parcel_messages_in_total{kind="tracking"} 5.0',
                 "parcel_broadcasts_out_total 10.0", "parcel_broadcast_latency_seconds_count 5.0",
                 "parcel_samples_queued 0.0", "parcel_samples_written_total 1.0",
                 "parcel_samples_dropped_total 0.0", "parcel_database_errors_total 0.0"):
        assert line in text, line


@pytest.mark.gen_test
@settings(trusted_proxies=(ip_network("127.0.0.1/32"),), metrics_token="m" * 32)
async def test_metrics_are_for_loopback_or_the_metrics_token(world):
    outside = {"X-Forwarded-For": "203.0.113.9"}  # through the trusted proxy, from outside
    refused(await world.api("GET", "/metrics", headers=outside), 403)
    refused(await world.api("GET", "/metrics", headers={**outside, "Authorization": "Bearer wrong"}), 403)
    r = await world.api("GET", "/metrics", headers={**outside, "Authorization": f"Bearer {'m' * 32}"})
    assert r.code == 200 and b"parcel_samples_queued" in r.body
    assert (await world.api("GET", "/metrics")).code == 200  # loopback itself


@pytest.mark.gen_test
@settings(metrics_token="m" * 32)
async def test_a_request_through_a_proxy_on_loopback_is_no_loopback_client(world):
    """Without TRUSTED_PROXIES, nginx on loopback passes on requests from anywhere: its headers
    say so, and such a request needs the METRICS_TOKEN."""
    for proxied in ({"X-Forwarded-For": "203.0.113.9"}, {"X-Real-IP": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}):
        refused(await world.api("GET", "/metrics", headers=proxied), 403, proxied)
        r = await world.api("GET", "/metrics", headers={**proxied, "Authorization": f"Bearer {'m' * 32}"})
        assert r.code == 200 and b"parcel_samples_queued" in r.body, proxied
    assert (await world.api("GET", "/metrics")).code == 200


@pytest.mark.gen_test
async def test_a_request_without_credentials_gets_401_not_403(world):
    for method, path in (("POST", "/api/users/"), ("POST", "/api/parcels/"), ("GET", "/api/parcels/"),
                         ("POST", "/api/parcels/1/status/"), ("POST", "/api/me/password/")):
        refused(await world.api(method, path, body={} if method == "POST" else None), 401, path)


async def timed(call) -> tuple[float, object]:
    started = time.monotonic()
    answer = await call
    return time.monotonic() - started, answer


@pytest.mark.gen_test(timeout=90)
async def test_a_frozen_database_costs_the_broadcast_nothing_and_requests_a_503_within_3_s(world, tmp_path):
    async with own_database(world, tmp_path) as (own, pid):
        s = await scene(own)
        watcher = await subscribed(own, s.id, s.client)
        driver = await subscribed(own, s.id, s.driver)
        os.kill(pid, signal.SIGSTOP)  # the database freezes
        for n in range(1, 11):  # the live drive goes on: every update reaches the watcher
            await send_location(driver, 28.0 + n / 100, 77.0, watcher)
        took, answer = await timed(own.api("GET", "/api/parcels/", s.client))
        assert took < 3.0 and refused(answer, 503) == "the database is unavailable", took
        took, health = await timed(own.api("GET", "/healthz"))
        assert took < 3.0 and health.code == 503 and body(health)["database"] == "unavailable", took
        took, page = await timed(own.page("/parcels", s.client))
        assert took < 3.0 and page.code == 503 and "not answering" in page.body.decode()
        late = await own.socket(s.id, own.token(s.client))  # a new socket is told, with 1013
        await expect_error(late, "database is unavailable")
        await expect_closed(late, 1013)
        assert own.app.hub.writer.queued + own.app.hub.writer.parcels_pending > 0  # the samples wait
        took, drained = await timed(own.app.hub.writer.drain(within=2))  # shutdown's drain keeps its budget
        assert not drained and took < 3.5, took

        os.kill(pid, signal.SIGCONT)  # it is back: the samples land, health returns
        assert await own.app.hub.writer.drain(within=15)
        history = body(await own.api("GET", f"/api/parcels/{s.id}/locations/", s.client))["locations"]
        assert [p["lat"] for p in history] == [28.05, 28.1]
        assert (await own.api("GET", "/healthz")).code == 200
        metrics = (await own.api("GET", "/metrics")).body.decode()
        assert "parcel_database_errors_total 3.0" in metrics  # the API call, the page, the socket
        driver.write_message(location(28.2, 77.0))
        assert (await recv(watcher))["location"]["lat"] == 28.2


@pytest.mark.gen_test
async def test_the_dashboard_plots_only_series_the_server_exposes(world):
    s = await scene(world)
    driver = await subscribed(world, s.id, s.driver)
    await send_location(driver, 28.0, 77.0)  # so that every series has a sample
    exposed = (await world.api("GET", "/metrics")).body.decode()
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    wanted = {name for panel in dashboard["panels"] for target in panel["targets"]
              for name in re.findall(r"parcel_[a-z_]+", target["expr"])}
    assert wanted and all(re.search(rf"^{name}[{{ ]", exposed, re.M) for name in wanted), wanted


def test_sigterm_exits_within_10_s_even_with_the_database_frozen(tmp_path):
    """SIGTERM to exit within 10 s with sockets open, samples queued and the embedded database
    frozen (SIGSTOP): the worst case, where closing connections, writing what is queued and
    stopping the database each run out their time, so they must share one budget."""
    server = Server(app_env(DATA_DIR=str(tmp_path), LOCATION_SAMPLE_EVERY="1")).start()  # with the demo data
    db_pid = json.loads((tmp_path / "db-server.json").read_text())["pid"]
    try:
        driver, client = server.token("driver@demo.test", "demo-pass"), server.token("client@demo.test", "demo-pass")
        _, (parcel, *_) = server.api("GET", "/api/parcels/", driver)
        url = f"ws://127.0.0.1:{server.port}/ws/tracking/?parcel_id={parcel['id']}&token="

        async def drive_then_stop() -> float:
            sockets = [await websocket_connect(url + token) for token in (driver, client, client)]
            for ws in sockets:
                assert (await recv(ws))["type"] == "subscribed"
            idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
            for sock in idle:
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a request never finished
            os.kill(db_pid, signal.SIGSTOP)
            for n in range(8):  # every one sampled, none written
                sockets[0].write_message(location(28.6 - n / 1000, 77.2))
                assert (await recv(sockets[0]))["type"] == "location_update"
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.process.wait, 40)
            took = time.monotonic() - started
            for sock in idle:
                sock.close()
            return took

        took = asyncio.run(drive_then_stop())
    finally:
        try:
            os.kill(db_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        output = server.stop()
    assert took < 10 and server.process.returncode == 0, (took, server.process.returncode, output)
    assert "could not be written before shutdown" in output, output
    assert not _alive(db_pid), "the embedded database outlived the server"
