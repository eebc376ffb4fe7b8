"""What an attack from outside found, each refused through the real server (docs/security.md).

One test per finding: forwarded headers, ended sessions, token types, the open
redirect, limits across a user's sockets, inputs that used to answer 500, bodies,
RFC 6455 close codes, the command line, file permissions, long passwords, nosniff.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from ipaddress import ip_network

import bcrypt
import jwt
import pytest
from pymongo import MongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from devtools.process import ROOT, app_env, run_cli
from models import users
from tests.conftest import PASSWORD, TEST_SECRET, World, body, claims, location, refused, settings
from tests.helpers import (
    SlowReader,
    expect_closed,
    expect_error,
    nothing_arrives,
    rejected,
    scene,
    send_location,
    subscribed,
)


async def login(world: World, email: str, password: str = PASSWORD, address: str | None = None):
    headers = {"X-Forwarded-For": address, "X-Real-IP": address} if address else {}
    return await world.api("POST", "/api/token/", body={"email": email, "password": password}, headers=headers)


# -- forwarded headers and the throttle ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_spoofed_forwarded_headers_do_not_get_round_the_throttle(world, caplog):
    victim = await world.user("client")
    answers = [(await login(world, victim.email, "wrong", f"198.51.100.{i}")).code for i in range(8)]
    assert answers[:5] == [401] * 5 and answers[5:] == [429] * 3  # one address: the direct peer's
    assert "198.51.100." not in caplog.text  # nor in the access log


@pytest.mark.gen_test(timeout=30)
@settings(trusted_proxies=(ip_network("127.0.0.1/32"),), login_max_failures=3)
async def test_a_trusted_proxy_names_the_client_and_the_account_is_limited_too(world, caplog):
    victim = await world.user("client")
    first = [(await login(world, victim.email, "wrong", "203.0.113.7")).code for _ in range(4)]
    assert first == [401, 401, 401, 429]  # the client behind the proxy is throttled, by its own address
    assert (await login(world, victim.email, address="203.0.113.8")).code == 200  # another client is not
    assert "203.0.113.7" in caplog.text  # and the log names the real client
    # Many addresses taking turns at one account: at 4 x the limit (12 failures, 3 of them
    # above) the account itself waits, whichever address asks.
    codes = [(await login(world, victim.email, "wrong", f"192.0.2.{i}")).code for i in range(12)]
    assert codes == [401] * 9 + [429] * 3


# -- sessions that end ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_deleted_or_demoted_users_token_opens_nothing(world):
    s = await scene(world)
    dispatcher_token, client_token = world.token(s.dispatcher), world.token(s.client)
    await world.app.db.users.update_one({"_id": s.client.id}, {"$set": {"role": "driver"}})  # demoted
    await rejected(world, s.id, client_token, 4401)
    refused(await world.api("GET", "/api/me/", headers={"Authorization": f"Bearer {client_token}"}), 401)
    await world.app.db.users.delete_one({"_id": s.dispatcher.id})  # deleted
    await rejected(world, s.id, dispatcher_token, 4401)
    refused(await world.api("GET", "/api/parcels/", headers={"Authorization": f"Bearer {dispatcher_token}"}), 401)


@pytest.mark.gen_test(timeout=30)
async def test_logout_ends_the_cookie_the_tokens_and_the_open_sockets(world):
    s = await scene(world)
    token = world.token(s.client)
    watching = await subscribed(world, s.id, s.client)
    assert (await world.page("/parcels", s.client)).code == 200
    assert (await world.page("/logout", s.client, "POST")).code == 302
    assert (await world.page("/parcels", s.client)).code == 302  # the copied cookie: back to the login page
    await expect_error(watching, "session has ended")
    await expect_closed(watching, 4401)
    refused(await world.api("GET", "/api/me/", headers={"Authorization": f"Bearer {token}"}), 401)
    fresh = await users.get_user(world.app.db, s.client.id)
    assert (await world.api("GET", "/api/me/", fresh)).code == 200  # a new login works


@pytest.mark.gen_test(timeout=30)
async def test_a_new_password_or_role_ends_what_was_issued_before(world):
    s = await scene(world)
    old = world.token(s.client)
    changed = await world.api("POST", "/api/me/password/", s.client,
                              body={"password": PASSWORD, "new_password": "a new secret phrase"})
    assert changed.code == 200, changed.body
    refused(await world.api("GET", "/api/me/", headers={"Authorization": f"Bearer {old}"}), 401)
    refused(await login(world, s.client.email), 401)
    assert (await login(world, s.client.email, "a new secret phrase")).code == 200
    refused(await world.api("POST", "/api/me/password/", s.driver, body={"password": "wrong", "new_password": "x" * 9}),
            401)

    driver_socket = await subscribed(world, s.id, s.driver)
    demoted = await world.api("POST", f"/api/users/{s.driver.id}/role/", s.dispatcher, body={"role": "client"})
    assert demoted.code == 200 and body(demoted)["role"] == "client"
    await expect_error(driver_socket, "session has ended")
    await expect_closed(driver_socket, 4401)
    client = await users.get_user(world.app.db, s.client.id)  # as now stored, with its new session
    refused(await world.api("POST", f"/api/users/{client.id}/role/", client, body={"role": "dispatcher"}), 403)
    refused(await world.api("POST", "/api/users/999999/role/", s.dispatcher, body={"role": "client"}), 404)


# -- token types ----------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_the_pages_socket_token_opens_sockets_only(world):
    s = await scene(world)
    socket_token = json.loads((await world.page("/api/token/ws/", s.client)).body)["access"]
    assert jwt.decode(socket_token, TEST_SECRET, algorithms=["HS256"])["type"] == "socket"
    refused(await world.api("POST", f"/api/parcels/{s.id}/status/", body={"status": "cancelled"},
                            headers={"Authorization": f"Bearer {socket_token}"}), 401)
    ws = await world.socket(s.id, socket_token)
    assert json.loads(await ws.read_message())["type"] == "subscribed"


@pytest.mark.gen_test
async def test_a_token_naming_an_impossible_user_is_a_401_not_a_500(world):
    client = await world.user("client")
    for sub in (str(2**63), "-1", "0", "1e3", "٣"):
        forged = jwt.encode(claims(client, sub=sub), TEST_SECRET, algorithm="HS256")
        refused(await world.api("GET", "/api/me/", headers={"Authorization": f"Bearer {forged}"}), 401, sub)


# -- the open redirect ------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_next_never_leaves_the_site(world):
    client = await world.user("client")
    for target in ("/%09/evil.host/x", "/%0a/evil.host", "/%5Cevil.host", "//evil.host", "https://evil.host/",
                   "/%20/evil.host"):
        r = await world.page(f"/login?next={target}", client)
        assert (r.code, r.headers["Location"]) == (302, "/parcels"), target
    r = await world.page("/login?next=/parcels/7/track", client)
    assert r.headers["Location"] == "/parcels/7/track"


# -- limits across a user's sockets ---------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_the_message_limit_counts_all_of_a_drivers_sockets(world):
    s = await scene(world)
    watcher = await subscribed(world, s.id, s.client)
    sockets = [await subscribed(world, s.id, s.driver) for _ in range(3)]
    for n in range(10):  # 30 in a burst: each socket at its own limit, the driver over theirs
        for ws in sockets:
            ws.write_message(location(20.0, n))
    for _ in range(20):
        assert json.loads(await watcher.read_message())["type"] == "location_update"
    await nothing_arrives(watcher)  # the other 10 were refused
    seen = [message for ws in sockets for message in await everything_waiting(ws)]
    assert sum("from all of your sockets" in m.get("message", "") for m in seen) == 10
    assert sum(m["type"] == "location_update" for m in seen) == 3 * 20


async def everything_waiting(ws) -> list[dict]:
    """Every message the socket has received, until none comes for 0.3 s."""
    messages = []
    while True:
        try:
            messages.append(json.loads(await asyncio.wait_for(ws.read_message(), 0.3)))
        except TimeoutError:
            return messages


@settings(user_sockets=3)
@pytest.mark.gen_test(timeout=30)
async def test_open_sockets_per_user_are_capped(world):
    s = await scene(world)
    kept = [await subscribed(world, s.id, s.client) for _ in range(3)]
    message, _ = await rejected(world, s.id, world.token(s.client), 4429)
    assert "too many open sockets" in message
    kept[0].close()
    await asyncio.sleep(0.1)
    await subscribed(world, s.id, s.client)  # one closed: one more may open
    await subscribed(world, s.id, s.dispatcher)  # another user is not affected


# -- inputs that answered 500 -------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_huge_ids_deep_bodies_and_nul_paths_are_clear_refusals(world):
    s = await scene(world)
    refused(await world.api("POST", f"/api/parcels/{s.id}/assign/", s.dispatcher, body={"driver_id": 2**70}), 400)
    refused(await world.api("POST", "/api/parcels/", s.dispatcher, body={
        "owner_id": 10**30, "pickup": {"lat": 1, "lng": 1}, "destination": {"lat": 1, "lng": 1}}), 400)
    deep = b"[" * 20000 + b"]" * 20000
    refused(await world.api("POST", "/api/parcels/", s.client, raw=b'{"pickup": ' + deep + b"}"), 400)
    for path in ("/static/js/%00", "/static/%00/x.js"):
        try:
            r = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{world.port}{path}")
        except HTTPClientError as e:
            r = e.response
        assert r.code == 404, path


@pytest.mark.gen_test(timeout=30)
async def test_bodies_over_the_cap_get_413_however_they_arrive(world):
    client = await world.user("client")
    big = json.dumps({"pickup": "x" * (2 * 1024 * 1024)}).encode()
    refused(await world.api("POST", "/api/parcels/", client, raw=big), 413)  # declared: 2 MiB

    async def chunks(write) -> None:
        for _ in range(20):  # 100 KiB in chunks, no Content-Length
            await write(b" " * 5120)

    request = HTTPRequest(f"http://127.0.0.1:{world.port}/api/parcels/", method="POST", body_producer=chunks,
                          headers={"Authorization": f"Bearer {world.token(client)}"}, request_timeout=10)
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        response = e.response
    refused(response, 413)


# -- the WebSocket protocol itself ---------------------------------------------------------------------------


def raw_frame(first_byte: int, payload: bytes, masked: bool = True) -> bytes:
    mask = os.urandom(4) if masked else b""
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
    return bytes([first_byte, (0x80 if masked else 0) | len(payload)]) + mask + data


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(("frame", "code"), [
    (raw_frame(0x81, b'{"type": "\xff"}'), 1007),  # text that is not UTF-8
    (raw_frame(0x81 | 0x40, b"{}"), 1002),  # a reserved bit set
    (raw_frame(0x81, b'{"type": "location_update"}', masked=False), 1002),  # a client frame not masked
])
async def test_protocol_violations_get_their_close_code(world, frame, code):
    s = await scene(world)
    peer = await SlowReader.connect(world.port, f"parcel_id={s.id}&token={world.token(s.client)}")
    assert json.loads((await peer.frame())[1])["type"] == "subscribed"
    peer.writer.write(frame)
    opcode, payload = await peer.frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == code


# -- the command line ---------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(db_server: str, tmp_path) -> dict[str, str]:
    return app_env(MONGODB_URI=db_server, MONGODB_DB=f"cli_{uuid.uuid4().hex[:10]}", DATA_DIR=str(tmp_path))


def one_line_refusal(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_cli_refuses_bad_ports_ids_and_emails_in_one_line(cli_env):
    for port in ("99999", "0", "-1", "eighty"):
        assert "port" in one_line_refusal(run_cli("serve", "--port", port, env=cli_env))
    one_line_refusal(run_cli("assign", "9" * 23, "d@example.test", env=cli_env))
    for email in ("a\nb@example.test", "🙂@example.test", "x" * 5000 + "@example.test", "@", "a\x01@example.test",
                  "no-at-sign"):
        one_line_refusal(run_cli("create-user", "--email", email, "--password", "password1", "--role", "client",
                                 env=cli_env))


def test_cli_reads_the_password_from_stdin_not_the_command_line(cli_env):
    made = subprocess.run([sys.executable, "app.py", "create-user", "--email", "s@example.test", "--password-stdin",
                           "--role", "client"], cwd=ROOT, env=cli_env, input="from stdin 123\n", capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    with MongoClient(cli_env["MONGODB_URI"]) as client:
        stored = client[cli_env["MONGODB_DB"]].users.find_one({"email": "s@example.test"})
    assert bcrypt.checkpw(b"from stdin 123", stored["password_hash"].encode())
    one_line_refusal(subprocess.run([sys.executable, "app.py", "create-user", "--email", "t@example.test",
                                     "--role", "client"], cwd=ROOT, env=cli_env, stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=60))


@pytest.mark.gen_test
async def test_the_api_checks_emails_as_the_cli_does(world):
    dispatcher = await world.user("dispatcher")
    for email in ("@", "a\x00@example.test", "🙂@example.test", "a b@example.test", "x" * 300 + "@example.test"):
        refused(await world.api("POST", "/api/users/", dispatcher, body={
            "email": email, "password": "password1", "role": "client"}), 400, email)


def test_the_data_dir_and_its_files_are_private(tmp_path):
    data = tmp_path / "data"
    made = run_cli("create-user", "--email", "p@example.test", "--password", "password1", "--role", "client",
                   env=app_env(DATA_DIR=str(data)))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    loose = [(p, oct(stat.S_IMODE(p.stat().st_mode))) for p in data.rglob("*")
             if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not loose, loose


# -- passwords and headers ------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_password_longer_than_72_bytes_is_not_matched_on_its_first_72(world):
    dispatcher = await world.user("dispatcher")
    password = "p" * 72
    made = await world.api("POST", "/api/users/", dispatcher, body={
        "email": "long@example.test", "password": password, "role": "client"})
    assert made.code == 201
    assert (await login(world, "long@example.test", password)).code == 200
    refused(await login(world, "long@example.test", password + "anything"), 401)


@pytest.mark.gen_test
async def test_nosniff_on_every_answer(world):
    client = await world.user("client")
    answers = [await world.api("GET", "/api/me/", client), await world.api("GET", "/api/nothing/"),
               await world.page("/login")]
    for path in ("/static/css/app.css", "/static/js/ui.js"):
        answers.append(await AsyncHTTPClient().fetch(f"http://127.0.0.1:{world.port}{path}"))
    for answer in answers:
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", answer.effective_url


@settings(max_unsent=64 * 1024, rate_limit=10**9, user_messages_per_second=10**9)
@pytest.mark.gen_test(timeout=60)
async def test_a_subscriber_that_stops_reading_is_closed_and_the_others_carry_on(world):
    s = await scene(world)
    stalled = await SlowReader.connect(world.port, f"parcel_id={s.id}&token={world.token(s.client)}")
    stalled.writer.transport.pause_reading()  # reads nothing more: what it is sent piles up
    watcher = await subscribed(world, s.id, s.dispatcher)
    driver = await subscribed(world, s.id, s.driver)
    address = "x" * 250
    for n in range(1, 20_001):  # about 8 MB for each subscriber
        driver.write_message(location(n % 90, 0.0, address=address))
        if n % 500 == 0:  # the others keep up all along
            for ws in (driver, watcher):
                for _ in range(500):
                    assert json.loads(await ws.read_message())["type"] == "location_update"
        if world.app.hub.subscriber_count(s.id) == 2:
            break
    assert world.app.hub.subscriber_count(s.id) == 2, "the stalled socket was never let go"
    stalled.writer.transport.resume_reading()
    frames = []
    while True:  # what it had been sent, then the close frame
        opcode, payload = await stalled.frame()
        if opcode == 0x8:
            assert int.from_bytes(payload[:2], "big") == 1008
            break
        frames.append(opcode)
    await send_location(driver, 1.5, 2.5, watcher)
