"""The command line (docs/protocol.md, "Commands and settings").

What it prints, and exit status 2 with one line for bad arguments.
"""

from __future__ import annotations

import uuid

import pytest

from devtools.process import Server, app_env, run_cli


@pytest.fixture
def env(db_server: str, tmp_path) -> dict[str, str]:
    return app_env(MONGODB_URI=db_server, MONGODB_DB=f"cli_{uuid.uuid4().hex[:10]}", DATA_DIR=str(tmp_path))


def refused(result) -> str:
    """Assert a one-line error on stderr with exit status 2; return the line."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("app.py: error: ")
    return lines[0]


def test_create_user_parcel_and_assign(env):
    client = run_cli("create-user", "--email", "c@example.test", "--password", "password1", "--role", "client",
                     env=env)
    assert client.returncode == 0 and client.stdout.strip().isdigit()
    driver = run_cli("create-user", "--email", "d@example.test", "--password", "password1", "--role", "driver",
                     "--name", "Dee", env=env)
    assert int(driver.stdout) == int(client.stdout) + 1
    parcel = run_cli("create-parcel", "--owner", "C@example.test", "--pickup", "28.61,77.23,India Gate, Delhi",
                     "--destination", "28.55,77.20", env=env)
    assert parcel.returncode == 0, parcel.stderr
    parcel_id = parcel.stdout.strip()
    assigned = run_cli("assign", parcel_id, "d@example.test", env=env)
    assert assigned.returncode == 0, assigned.stderr
    assert "assigned" in assigned.stdout


def test_bad_arguments_exit_2_with_one_line(env):
    make = ("create-user", "--password", "password1")
    assert run_cli(*make, "--email", "c@example.test", "--role", "client", env=env).returncode == 0
    assert "exists" in refused(run_cli(*make, "--email", "C@EXAMPLE.test", "--role", "client", env=env))
    assert "role" in refused(run_cli(*make, "--email", "x@example.test", "--role", "admin", env=env))
    assert "email" in refused(run_cli(*make, "--email", "nope", "--role", "client", env=env))
    refused(run_cli("create-user", "--email", "y@example.test", "--password", "short", "--role", "client", env=env))
    refused(run_cli("create-parcel", "--owner", "c@example.test", "--pickup", "abc", "--destination", "1,2", env=env))
    assert "lat" in refused(run_cli("create-parcel", "--owner", "c@example.test", "--pickup", "95,2",
                                    "--destination", "1,2", env=env))
    assert "client" in refused(run_cli("create-parcel", "--owner", "ghost@example.test", "--pickup", "1,2",
                                       "--destination", "1,2", env=env))
    refused(run_cli("assign", "twelve", "c@example.test", env=env))
    assert "driver" in refused(run_cli("assign", "1", "c@example.test", env=env))
    refused(run_cli(env=env))
    refused(run_cli("launch", env=env))


def test_assign_refuses_a_missing_parcel(env):
    run_cli("create-user", "--email", "d@example.test", "--password", "password1", "--role", "driver", env=env)
    assert "no parcel" in refused(run_cli("assign", "404", "d@example.test", env=env))


def test_demo_is_idempotent_and_prints_logins(env):
    first = run_cli("demo", env=env)
    assert first.returncode == 0 and "demo data created" in first.stdout
    assert "driver@demo.test" in first.stdout and "client@demo.test" in first.stdout
    second = run_cli("demo", env=env)
    assert second.returncode == 0 and "already present" in second.stdout


def test_an_unreachable_database_or_broker_is_one_line_and_exit_1(env, tmp_path):
    nowhere = run_cli("demo", env={**env, "MONGODB_URI": "mongodb://127.0.0.1:1/"})
    assert nowhere.returncode == 1
    assert nowhere.stderr.strip() == "app.py: error: cannot use the database: 127.0.0.1:1: [Errno 111] " \
                                     "Connect call failed ('127.0.0.1', 1)"
    no_broker = run_cli("serve", "--port", "1", "--no-demo", env={**env, "BROKER_URL": "redis://127.0.0.1:1/0"})
    assert no_broker.returncode == 1
    assert len(no_broker.stderr.strip().splitlines()) == 1
    assert no_broker.stderr.startswith("app.py: error: cannot reach the broker")


def test_bad_settings_exit_2(env):
    assert "LOCATION_SAMPLE_EVERY" in refused(run_cli("demo", env={**env, "LOCATION_SAMPLE_EVERY": "often"}))
    assert "BROKER_URL" in refused(run_cli("demo", env={**env, "BROKER_URL": "amqp://x"}))
    production = refused(run_cli("serve", "--port", "1", env={**env, "APP_ENV": "production"}))
    assert "SECRET_KEY" in production


def test_production_never_creates_the_demo_data(env):
    """Its accounts have a published password: `serve` without --no-demo makes none, `demo` refuses."""
    production = {**env, "APP_ENV": "production", "SECRET_KEY": "s" * 48}
    assert "APP_ENV=production" in refused(run_cli("demo", env=production))
    server = Server(production).start()
    try:
        status, answer = server.api("POST", "/api/token/", body={"email": "dispatcher@demo.test",
                                                                 "password": "demo-pass"})
    finally:
        output = server.stop()
    assert status == 401, answer
    assert "demo" not in output, output
