"""The embedded database and restarts: shared per data dir, stopped by the last user, data kept."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

from tornado.websocket import websocket_connect

from devtools.process import Server, app_env, run_cli
from models.embedded import EmbeddedDatabase, _alive, _ping
from tests.conftest import location


def test_second_user_of_a_data_dir_reuses_the_server_and_the_last_one_stops_it(tmp_path):
    first, second = EmbeddedDatabase(tmp_path), EmbeddedDatabase(tmp_path)
    uri = first.start()
    assert second.start() == uri and first.started_here and not second.started_here
    pid = json.loads((tmp_path / "db-server.json").read_text())["pid"]
    port = int(uri.split(":")[2].split("/")[0])
    first.stop()  # the one that started it leaves first: the other still uses it
    assert _ping(port, timeout=2)
    second.stop()
    assert not _alive(pid) and not (tmp_path / "db-server.json").exists()


def test_restart_keeps_users_parcels_and_the_last_location(tmp_path):
    env = app_env(DATA_DIR=str(tmp_path), LOCATION_SAMPLE_EVERY="5")
    server = Server(env, "--no-demo").start()
    try:
        state = json.loads((tmp_path / "db-server.json").read_text())
        # The CLI joins the database the server started instead of opening the same files again.
        for email, role in (("c@example.test", "client"), ("d@example.test", "driver")):
            made = run_cli("create-user", "--email", email, "--password", "password1", "--role", role, env=env)
            assert made.returncode == 0, made.stderr
        parcel_id = int(run_cli("create-parcel", "--owner", "c@example.test", "--pickup", "28.6,77.2,A",
                                "--destination", "28.5,77.1,B", env=env).stdout)
        assert run_cli("assign", str(parcel_id), "d@example.test", env=env).returncode == 0
        assert json.loads((tmp_path / "db-server.json").read_text()) == state and _alive(state["pid"])
        assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600

        driver_token = server.token("d@example.test", "password1")

        async def drive() -> None:
            ws = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws/tracking/?parcel_id={parcel_id}"
                                         f"&token={driver_token}")
            assert json.loads(await asyncio.wait_for(ws.read_message(), 5))["type"] == "subscribed"
            for lat in (28.61, 28.62, 28.63):  # fewer than LOCATION_SAMPLE_EVERY: none sampled yet
                ws.write_message(location(lat, 77.2, address="Ring Rd"))
                await asyncio.wait_for(ws.read_message(), 5)
            ws.close()  # the phone drops off: its latest update must still be kept

        asyncio.run(drive())
    finally:
        output = server.stop()
    assert "Traceback" not in output, output
    assert not _alive(state["pid"]), "the embedded database outlived the server"

    restarted = Server(env, "--no-demo").start()
    try:
        token = restarted.token("c@example.test", "password1")
        status, parcel = restarted.api("GET", f"/api/parcels/{parcel_id}/", token)
        assert status == 200
        assert parcel["status"] == "assigned"
        assert parcel["last_location"]["lat"] == 28.63 and parcel["last_location"]["address"] == "Ring Rd"
        _, history = restarted.api("GET", f"/api/parcels/{parcel_id}/locations/", token)
        assert [p["lat"] for p in history["locations"]] == [28.63]
    finally:
        restarted.stop()


def test_a_database_that_cannot_start_is_one_clear_line(tmp_path):
    blocked = tmp_path / "data"
    blocked.mkdir()
    (blocked / "db").write_text("a file where the database folder should be")
    result = run_cli("demo", env=app_env(DATA_DIR=str(blocked)))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("app.py: error:")
    assert os.listdir(blocked) == ["db"] or "db-server.json" not in os.listdir(blocked)


def test_the_database_killed_under_a_live_drive_comes_back_with_every_sample(tmp_path):
    """SIGKILL the embedded database while a driver drives (every update sampled): the
    broadcast goes on, the server restarts the database within seconds on the same data dir,
    the API answers again, new sockets subscribe, a CLI command meanwhile starts no second
    database, and the history holds every update the server accepted."""
    env = app_env(DATA_DIR=str(tmp_path), LOCATION_SAMPLE_EVERY="1")
    for email, role in (("c@example.test", "client"), ("d@example.test", "driver")):
        assert run_cli("create-user", "--email", email, "--password", "password1", "--role", role,
                       env=env).returncode == 0
    parcel_id = int(run_cli("create-parcel", "--owner", "c@example.test", "--pickup", "28.6,77.2",
                            "--destination", "28.5,77.1", env=env).stdout)
    assert run_cli("assign", str(parcel_id), "d@example.test", env=env).returncode == 0
    server = Server(env, "--no-demo").start()
    try:
        driver_token, client_token = server.token("d@example.test", "password1"), server.token("c@example.test",
                                                                                               "password1")
        first_pid = json.loads((tmp_path / "db-server.json").read_text())["pid"]
        base = f"ws://127.0.0.1:{server.port}/ws/tracking/?parcel_id={parcel_id}&token="

        async def drive() -> tuple[int, float]:
            driver = await websocket_connect(base + driver_token)
            watcher = await websocket_connect(base + client_token)
            for ws in (driver, watcher):
                assert json.loads(await asyncio.wait_for(ws.read_message(), 5))["type"] == "subscribed"
            accepted = 0
            for n in range(1, 41):
                if n == 10:
                    os.kill(first_pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                    # A command run while it is down waits for the server to bring it back.
                    made = await asyncio.to_thread(run_cli, "create-user", "--email", "late@example.test",
                                                   "--password", "password1", "--role", "client", env=env)
                    assert made.returncode == 0, made.stderr
                driver.write_message(location(28.0 + n / 1000, 77.0))
                echo = json.loads(await asyncio.wait_for(driver.read_message(), 5))
                assert echo["type"] == "location_update", echo
                seen = json.loads(await asyncio.wait_for(watcher.read_message(), 5))
                assert seen == echo  # the broadcast never waits for the database
                accepted += 1
                await asyncio.sleep(0.15)
            return accepted, killed_at

        accepted, killed_at = asyncio.run(drive())
        deadline = killed_at + 10
        while True:  # within 10 s of the kill the API answers again
            status, _ = server.api("GET", f"/api/parcels/{parcel_id}/", client_token)
            if status == 200:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        state = json.loads((tmp_path / "db-server.json").read_text())
        assert state["pid"] != first_pid and _alive(state["pid"]) and not _alive(first_pid)
        # The database's own command line (its lifeline's watcher names it too, after lifeline.py).
        databases = subprocess.run(["pgrep", "-f", f"^[^ ]+ -m secantus .*{tmp_path}"], capture_output=True, text=True)
        assert databases.stdout.split() == [str(state["pid"])]  # one database, the server's

        async def subscribe_again() -> None:
            ws = await websocket_connect(base + client_token)
            assert json.loads(await asyncio.wait_for(ws.read_message(), 5))["type"] == "subscribed"

        asyncio.run(subscribe_again())
        for _ in range(50):  # the queued samples land once the database is back
            _, history = server.api("GET", f"/api/parcels/{parcel_id}/locations/", client_token)
            if len(history["locations"]) == accepted:
                break
            time.sleep(0.2)
        assert [p["lat"] for p in history["locations"]] == [28.0 + n / 1000 for n in range(1, accepted + 1)]
    finally:
        output = server.stop()
    assert "restarting it" in output and "Traceback" not in output, output


def test_the_database_does_not_outlive_a_server_killed_with_sigkill(tmp_path):
    env = app_env(DATA_DIR=str(tmp_path))
    server = Server(env, "--no-demo").start()
    database = json.loads((tmp_path / "db-server.json").read_text())["pid"]
    server.process.kill()  # no chance to stop anything itself
    server.process.wait()
    deadline = time.monotonic() + 10
    while _alive(database):
        assert time.monotonic() < deadline, "the embedded database outlived its server"
        time.sleep(0.1)
    again = Server(env, "--no-demo").start()  # the next server on the data dir starts cleanly
    try:
        assert again.api("GET", "/healthz")[1]["database"] == "ok"
    finally:
        again.stop()


def test_a_database_that_keeps_dying_stops_the_server_with_status_1(tmp_path):
    """Three restarts a minute at most: the fourth death stops the server, which exits 1 so
    that its own supervisor sees it."""
    env = app_env(DATA_DIR=str(tmp_path))
    server = Server(env, "--no-demo").start()
    try:
        for death in range(4):
            pid = json.loads((tmp_path / "db-server.json").read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while True:
                if server.process.poll() is not None:
                    break
                state = EmbeddedDatabase(tmp_path)._read_state()  # None while it is being rewritten
                if state and state["pid"] != pid and _alive(state["pid"]):
                    break  # restarted
                assert time.monotonic() < deadline, "neither restarted nor stopped"
                time.sleep(0.1)
            assert (server.process.poll() is None) == (death < 3), death
        assert server.process.wait(15) == 1
    finally:
        output = server.stop()
    assert "died 4 times within a minute" in output, output
