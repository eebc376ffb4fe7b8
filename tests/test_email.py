"""E-mail to the recipient (docs/protocol.md, "E-mail to the recipient", "The outbox"):
a real SMTP server (aiosmtpd, on a free loopback port) receives what the product sends for
parcels driven through the API and the driver's socket, across a restart and a mail
server that was down for a while.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import logging
import re
import socket
import threading
import time
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.testing import bind_unused_port

from devtools.process import app_env, run_cli
from models import mail, outbox
from models.db import utcnow
from settings import Settings
from tests.conftest import World, body, location, recv, settings
from tests.helpers import another_server, until
from tests.test_proof import send_proof

BUSINESS = "Speedy Parcels"
SENDER = "parcels@speedy.example"
RECIPIENT = {"name": "Asha Verma", "email": "asha.verma@home.example", "phone": "+91 98100 00000"}
PICKUP = {"lat": 28.6129, "lng": 77.2295, "address": "India Gate"}
DESTINATION = {"lat": 28.5494, "lng": 77.2001, "address": "12 Hauz Khas Village"}
WITHIN = 10.0  # seconds an e-mail may take to arrive (it goes at once; a retry here after OUTBOX_BACKOFF)
OUTBOX_BACKOFF = 0.3  # seconds: the test's first retry


class Inbox:
    """A real SMTP server on a loopback port; `messages` holds what it received, in order.
    It can be stopped and started again on the same port (a mail server down for a while)."""

    def __init__(self) -> None:
        sock, self.port = bind_unused_port()
        sock.close()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()
        self.controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's handler hook
        with self._lock:
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def start(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def subjects(self) -> list[str]:
        with self._lock:
            return [str(m["Subject"]) for m in self.messages]

    async def wait_for(self, count: int, within: float = WITHIN) -> list[EmailMessage]:
        """The first `count` messages, once they are in (fails after `within` seconds)."""
        await until(lambda: len(self.messages) >= count, within)
        with self._lock:
            return list(self.messages[:count])


@pytest.fixture
def smtp() -> Inbox:
    inbox = Inbox()
    inbox.start()
    yield inbox
    inbox.stop()


@pytest.fixture
def config(config: Settings, smtp: Inbox, http_port: int, request: pytest.FixtureRequest) -> Settings:
    """The test's settings, sending through `smtp`, its links to the test's server; a test
    may change any of it with `@settings(...)` (smtp_url="" for none)."""
    mine = {"smtp_url": f"smtp://127.0.0.1:{smtp.port}", "smtp_from": f"{BUSINESS} <{SENDER}>",
            "business_name": BUSINESS, "public_url": f"http://127.0.0.1:{http_port}",
            "outbox_backoff": OUTBOX_BACKOFF, "outbox_poll_every": 0.2}
    return dataclasses.replace(config, **{**mine, **getattr(request, "param", {})})


# -- driving a parcel -----------------------------------------------------------------


@dataclasses.dataclass
class People:
    client: Any
    driver: Any
    dispatcher: Any


async def people(world: World) -> People:
    return People(await world.user("client"), await world.user("driver", name="Ravi Kumar"),
                  await world.user("dispatcher"))


async def create(world: World, who: People, recipient: dict[str, str] | None = RECIPIENT) -> int:
    response = await world.api("POST", "/api/parcels/", who.client,
                               {"pickup": PICKUP, "destination": DESTINATION, "recipient": recipient})
    assert response.code == 201, response.body
    return body(response)["id"]


async def move(world: World, parcel_id: int, user: Any, status: str, **extra: Any) -> dict[str, Any]:
    response = await world.api("POST", f"/api/parcels/{parcel_id}/status/", user, {"status": status, **extra})
    assert response.code == 200, response.body
    return body(response)


async def to_transit(world: World, who: People, parcel_id: int) -> None:
    response = await world.api("POST", f"/api/parcels/{parcel_id}/assign/", who.dispatcher,
                               {"driver_id": who.driver.id})
    assert response.code == 200, response.body
    await move(world, parcel_id, who.driver, "picked_up")
    await move(world, parcel_id, who.driver, "in_transit")


async def drive_to_the_door(world: World, who: People, parcel_id: int) -> None:
    """The driver's fix at the destination, over the real socket: into its geofence."""
    ws = await world.socket(parcel_id, world.token(who.driver))
    first = await recv(ws)
    assert first["type"] == "subscribed", first
    ws.write_message(location(DESTINATION["lat"] + 0.0005, DESTINATION["lng"]))
    while (await recv(ws))["type"] != "location_update":
        pass
    ws.close()


# -- reading what arrived ---------------------------------------------------------------


def parts(message: EmailMessage) -> tuple[str, str]:
    """Its plain-text and HTML parts."""
    assert message.get_content_type() == "multipart/alternative", message.get_content_type()
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    return text, html


def unsubscribe_link(message: EmailMessage) -> str:
    text, html = parts(message)
    link = re.search(r"http://\S+/u/[A-Za-z0-9_\-]+", text).group(0)
    assert f'href="{link}"' in html
    assert message["List-Unsubscribe"] == f"<{link}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    return link


def check_common(message: EmailMessage, subject: str) -> tuple[str, str]:
    """From the business, to the recipient, `subject`, both parts naming the business."""
    assert message["Subject"] == f"{subject} · {BUSINESS}", message["Subject"]
    assert message["From"].addresses[0].addr_spec == SENDER and message["From"].addresses[0].display_name == BUSINESS
    assert message["To"].addresses[0].addr_spec == RECIPIENT["email"]
    text, html = parts(message)
    for part in (text, html):
        assert BUSINESS in part and "Hello Asha Verma" in part and DESTINATION["address"] in part
    assert "<html" in html and "<html" not in text
    unsubscribe_link(message)
    return text, html


async def fetch(url: str, method: str = "GET", form: str | None = None) -> tuple[int, str]:
    try:
        response = await AsyncHTTPClient().fetch(url, method=method, body=form, request_timeout=10,
                                                 follow_redirects=False)
    except HTTPClientError as e:
        response = e.response
    return response.code, response.body.decode()


async def entries(world: World, parcel_id: int) -> dict[str, dict[str, Any]]:
    """The parcel's e-mails in the outbox, by notification."""
    found = await world.app.db.outbox.find({"_id": {"$regex": f"^email:{parcel_id}:"}}).to_list(None)
    return {doc["_id"].split(":", 3)[3]: doc for doc in found}


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_the_recipient_gets_out_for_delivery_arriving_and_delivered_each_once_in_order(world, smtp):
    who = await people(world)
    parcel_id = await create(world, who)
    await to_transit(world, who, parcel_id)
    [out] = await smtp.wait_for(1)
    assert smtp.envelopes[0] == (SENDER, [RECIPIENT["email"]])
    text, html = check_common(out, "Your parcel is out for delivery")
    link = re.search(r"http://\S+/t/[A-Za-z0-9_\-]+", text).group(0)
    assert link.startswith(world.app.config.public_url + "/t/") and f'href="{link}"' in html
    code, page = await fetch(link)  # the share link opens the share page, no login
    assert code == 200 and "Your parcel" in page and BUSINESS in page

    await drive_to_the_door(world, who, parcel_id)
    arriving = (await smtp.wait_for(2))[1]
    text, _ = check_common(arriving, "Your parcel is arriving soon")
    assert "less than about 10 minutes" in text

    assert (await send_proof(world, parcel_id, who.driver, received_by="Meera (neighbour)")).code == 201
    await move(world, parcel_id, who.driver, "delivered")
    delivered = (await smtp.wait_for(3))[2]
    text, html = check_common(delivered, "Your parcel was delivered")
    assert "received by Meera (neighbour)" in text and "Meera (neighbour)" in html

    await asyncio.sleep(1.0)  # the outbox looks every 0.2 s: a second e-mail would be here by now
    assert smtp.subjects() == [f"{s} · {BUSINESS}" for s in ("Your parcel is out for delivery",
                                                             "Your parcel is arriving soon",
                                                             "Your parcel was delivered")]
    assert len({m["Message-ID"] for m in smtp.messages}) == 3
    stored = await entries(world, parcel_id)
    assert sorted(stored) == ["arriving", "delivered", "out_for_delivery"]
    assert all(e["state"] == "sent" and e["attempts"] == 0 and e["sent_at"] for e in stored.values())
    scrape = (await world.api("GET", "/metrics")).body.decode()
    assert 'parcel_outbox_sent_total{kind="email"} 3.0' in scrape


async def eventually(check: Any, within: float = WITHIN) -> Any:
    """Poll an async `check` until it returns something true; that value (fails after `within` s)."""
    deadline = time.monotonic() + within
    while not (found := await check()):
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)
    return found


async def failed_once(world: World, parcel_id: int, kind: str) -> dict[str, Any]:
    """The outbox entry of this e-mail, once a send of it has failed."""
    async def check() -> dict[str, Any] | None:
        entry = (await entries(world, parcel_id)).get(kind)
        return entry if entry is not None and entry["attempts"] >= 1 else None
    return await eventually(check)


@pytest.mark.gen_test(timeout=60)
async def test_an_email_that_could_not_be_sent_arrives_once_the_mail_server_is_back(world, smtp):
    who = await people(world)
    parcel_id = await create(world, who)
    smtp.stop()  # the mail server is down
    await to_transit(world, who, parcel_id)
    entry = await failed_once(world, parcel_id, "out_for_delivery")
    assert entry["state"] == "pending" and entry["last_error"] and entry["due_at"] > entry["failed_at"]
    smtp.start()  # back, on the same port
    [out] = await smtp.wait_for(1)
    check_common(out, "Your parcel is out for delivery")
    entry = await eventually(lambda: _state(world, parcel_id, "out_for_delivery", "sent"))
    assert entry["attempts"] >= 1
    scrape = (await world.api("GET", "/metrics")).body.decode()
    assert 'parcel_outbox_failures_total{kind="email"}' in scrape
    assert 'parcel_outbox_sent_total{kind="email"} 1.0' in scrape


@pytest.mark.gen_test(timeout=90)
async def test_across_a_restart_no_email_is_sent_twice_and_none_is_lost(world, smtp, db_server):
    # The product here is two servers on the test's database, the second started after the
    # first stopped (a restart); the test's own app sends nothing.
    await world.app.outbox.stop(1.0)
    async with another_server(world, db_server) as first:
        who = await people(first)
        parcel_id = await create(first, who)
        await to_transit(first, who, parcel_id)
        await smtp.wait_for(1)
        smtp.stop()
        await drive_to_the_door(first, who, parcel_id)
        await failed_once(first, parcel_id, "arriving")  # queued, not sent: the mail server is down
    smtp.start()
    async with another_server(world, db_server) as second:
        await smtp.wait_for(2)  # the restarted product sends what was queued before
        await drive_to_the_door(second, who, parcel_id)  # this process tells "arriving" again: nothing new is queued
        assert (await send_proof(second, parcel_id, who.driver, received_by="Asha")).code == 201
        await move(second, parcel_id, who.driver, "delivered")
        await smtp.wait_for(3)
        await asyncio.sleep(1.0)  # the outbox looks every 0.2 s: a second copy would be here by now
        assert smtp.subjects() == [f"{s} · {BUSINESS}" for s in ("Your parcel is out for delivery",
                                                                 "Your parcel is arriving soon",
                                                                 "Your parcel was delivered")]
        assert "received by Asha" in parts(smtp.messages[2])[0]


@pytest.mark.gen_test(timeout=60)
async def test_a_failed_delivery_tells_the_reason_and_the_next_attempt_is_told_again(world, smtp):
    who = await people(world)
    parcel_id = await create(world, who)
    await to_transit(world, who, parcel_id)
    await smtp.wait_for(1)
    await move(world, parcel_id, who.driver, "failed", reason="nobody_home", note="gate locked, dog barking")
    failed = (await smtp.wait_for(2))[1]
    text, html = check_common(failed, "We could not deliver your parcel")
    assert "Reason: Nobody home" in text and "Nobody home" in html
    assert "gate locked" not in text + html  # the note is the dispatcher's
    await to_transit(world, who, parcel_id)  # attempted again
    again = (await smtp.wait_for(3))[2]
    check_common(again, "Your parcel is out for delivery")
    queued = await world.app.db.outbox.find({"_id": {"$regex": f"^email:{parcel_id}:"}}).to_list(None)
    keys = {doc["_id"] for doc in queued}
    assert keys == {f"email:{parcel_id}:0:out_for_delivery", f"email:{parcel_id}:0:not_delivered",
                    f"email:{parcel_id}:1:out_for_delivery"}  # per attempt: the first one, then the second


@pytest.mark.gen_test(timeout=60)
async def test_the_unsubscribe_link_stops_every_email_to_that_address(world, smtp):
    who = await people(world)
    parcel_id = await create(world, who)
    other_id = await create(world, who)  # another parcel to the same address
    await to_transit(world, who, parcel_id)
    [out] = await smtp.wait_for(1)
    link = unsubscribe_link(out)
    code, page = await fetch(link)  # a mail scanner opening the link unsubscribes nobody
    assert code == 200 and RECIPIENT["email"] in page and "Stop e-mails" in page and BUSINESS in page
    assert not await mail.unsubscribed(world.app.db, RECIPIENT["email"])
    assert (await fetch(link.replace("/u/", "/u/x")))[0] == 404

    smtp.stop()  # an e-mail queued before the address unsubscribes is not sent after
    await drive_to_the_door(world, who, parcel_id)
    await failed_once(world, parcel_id, "arriving")
    code, page = await fetch(link, "POST", "List-Unsubscribe=One-Click")  # a mail client's one click: no cookie
    assert code == 200 and "You are unsubscribed" in page and RECIPIENT["email"] in page
    assert await mail.unsubscribed(world.app.db, RECIPIENT["email"].upper())
    smtp.start()
    entry = await eventually(lambda: _state(world, parcel_id, "arriving", "dropped"))
    assert entry["last_error"] == "the address unsubscribed"

    assert (await send_proof(world, parcel_id, who.driver, received_by="Asha")).code == 201
    await move(world, parcel_id, who.driver, "delivered")
    await to_transit(world, who, other_id)
    await asyncio.sleep(1.0)  # the outbox looks every 0.2 s: an e-mail would be here by now
    assert len(smtp.messages) == 1
    assert sorted(await entries(world, parcel_id)) == ["arriving", "out_for_delivery"]  # nothing more was queued
    assert await entries(world, other_id) == {}
    code, page = await fetch(link)
    assert code == 200 and "You are unsubscribed" in page


async def _state(world: World, parcel_id: int, kind: str, state: str) -> dict[str, Any] | None:
    entry = (await entries(world, parcel_id)).get(kind)
    return entry if entry is not None and entry["state"] == state else None


@settings(smtp_url="")
@pytest.mark.gen_test(timeout=60)
async def test_without_smtp_url_each_email_is_one_log_line_and_nothing_is_sent(world, smtp, caplog):
    caplog.set_level(logging.INFO, logger="parcel.mail")
    who = await people(world)
    parcel_id = await create(world, who)
    await create(world, who, recipient={"name": "No Mail"})  # no address: no e-mail
    await to_transit(world, who, parcel_id)
    await drive_to_the_door(world, who, parcel_id)
    assert (await send_proof(world, parcel_id, who.driver, received_by="Asha")).code == 201
    await move(world, parcel_id, who.driver, "delivered")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "parcel.mail"]

    await until(lambda: len(lines()) >= 3, WITHIN)
    await asyncio.sleep(1.0)  # a second line for any of them would be here by now
    assert lines() == [f"e-mail not sent (no SMTP_URL) to {RECIPIENT['email']}: {s} · {BUSINESS}"
                       for s in ("Your parcel is out for delivery", "Your parcel is arriving soon",
                                 "Your parcel was delivered")]
    assert smtp.messages == []


def test_bad_email_settings_are_one_line_and_exit_status_2(tmp_path):
    # The real command line, in a process of its own (main() sets up logging for the process).
    for env, fragment in [
        ({"SMTP_URL": "mail.example.com:25"}, "SMTP_URL must be smtp://"),
        ({"SMTP_URL": "smtp://user:hunter2@mail.example.com:99999"}, "SMTP_URL has no valid port"),
        ({"SMTP_URL": "smtp://mail.example.com:25", "SMTP_FROM": "nobody"}, "SMTP_FROM must be"),
        ({"NOTIFY_ARRIVING_MINUTES": "soon"}, "NOTIFY_ARRIVING_MINUTES must be a whole number"),
        ({"PUBLIC_URL": "track.example.com"}, "PUBLIC_URL must be an http"),
    ]:
        environment = {k: v for k, v in app_env(**env).items()
                       if k in env or k not in ("SMTP_URL", "SMTP_FROM", "NOTIFY_ARRIVING_MINUTES", "PUBLIC_URL")}
        done = run_cli("serve", "--data-dir", str(tmp_path), env=environment)
        assert done.returncode == 2, (env, done.stderr)
        err = done.stderr
        assert err.count("\n") == 1 and err.startswith("app.py: error: ") and fragment in err, err
        assert "hunter2" not in err


# -- the outbox itself, on a database of its own -----------------------------------------


@pytest.fixture
def own_db(io_loop, db_server: str):
    from models.db import Database

    db = Database(db_server, f"test_outbox_{time.monotonic_ns()}")
    io_loop.run_sync(db.ensure_indexes)
    yield db
    io_loop.run_sync(lambda: db.client.drop_database(db.db.name))
    io_loop.run_sync(db.close)


@pytest.mark.gen_test(timeout=60)
async def test_two_processes_send_each_entry_once_and_a_slow_endpoint_holds_up_no_other(own_db):
    from realtime.metrics import Metrics

    sent: list[tuple[str, str]] = []

    def sender(name: str):
        async def send(payload: dict[str, Any]) -> None:
            if payload["n"] == "slow":
                await asyncio.sleep(60)  # an endpoint that never answers
            await asyncio.sleep(0.01)
            sent.append((name, payload["n"]))
        return send

    boxes = [outbox.Outbox(own_db, Metrics(), backoff=30, poll_every=0.1, send_timeout=1.0) for _ in range(2)]
    for name, box in zip("ab", boxes, strict=True):
        box.register("webhook", sender(name))
    assert await outbox.enqueue(own_db, "hook:slow", "webhook", {"n": "slow"})
    for n in range(30):
        assert await outbox.enqueue(own_db, f"hook:{n}", "webhook", {"n": str(n)})
    assert not await outbox.enqueue(own_db, "hook:3", "webhook", {"n": "again"})  # the same key: stored once
    for box in boxes:
        await box.start()
    try:
        await until(lambda: len(sent) >= 30, 5.0)  # long before the slow one's timeout ends
        assert sorted(n for _, n in sent) == sorted(str(n) for n in range(30))  # each once, the slow one not yet
        assert {name for name, _ in sent} == {"a", "b"}  # both processes sent
        slow = await eventually(lambda: _attempted(own_db, "hook:slow"))
        assert slow["state"] == "pending" and slow["last_error"] == "no answer within 1 s"
        assert (slow["due_at"] - slow["failed_at"]).total_seconds() == pytest.approx(30, abs=0.01)
    finally:
        for box in boxes:
            await box.stop(1.0)
    assert await own_db.outbox.count_documents({"state": "sent"}) == 30


async def _attempted(db: Any, key: str) -> dict[str, Any] | None:
    entry = await outbox.get_entry(db, key)
    return entry if entry and entry["attempts"] else None


@pytest.mark.gen_test(timeout=60)
async def test_an_entry_failing_past_a_day_is_given_up_and_counted(own_db):
    from realtime.metrics import Metrics

    async def refuse(payload: dict[str, Any]) -> None:
        raise ConnectionRefusedError("connection refused")

    metrics = Metrics()
    box = outbox.Outbox(own_db, metrics, backoff=0.05, poll_every=0.1)
    box.register("email", refuse)
    yesterday = utcnow() - outbox.GIVE_UP_AFTER - outbox.timedelta(seconds=1)
    assert await outbox.enqueue(own_db, "email:1:0:arriving", "email", {"to": "a@b.example"}, now=yesterday)
    assert await outbox.enqueue(own_db, "email:2:0:arriving", "email", {"to": "a@b.example"})
    await box.start()
    try:
        given_up = await eventually(lambda: _in_state(own_db, "email:1:0:arriving", "failed"))
        assert given_up["attempts"] == 1 and given_up["last_error"] == "connection refused"
        fresh = await eventually(lambda: _attempted_times(own_db, "email:2:0:arriving", 3))
        assert fresh["state"] == "pending"  # retried with backoff, not given up
    finally:
        await box.stop(1.0)
    scrape = metrics.exposition().decode()
    assert 'parcel_outbox_given_up_total{kind="email"} 1.0' in scrape


async def _in_state(db: Any, key: str, state: str) -> dict[str, Any] | None:
    entry = await outbox.get_entry(db, key)
    return entry if entry and entry["state"] == state else None


async def _attempted_times(db: Any, key: str, times: int) -> dict[str, Any] | None:
    entry = await outbox.get_entry(db, key)
    return entry if entry and entry["attempts"] >= times else None


async def drive_towards(world: World, who: People, parcel_id: int, seconds: float,
                        done: Any = lambda: False) -> None:
    """The driver closes in on the destination from 3 km at 25 m/s, a fix every 0.25 s over the
    real socket, for `seconds` or until `done()` (the ETA needs a few seconds of driving:
    realtime/journey.py)."""
    ws = await world.socket(parcel_id, world.token(who.driver))
    assert (await recv(ws))["type"] == "subscribed"
    lat, step = DESTINATION["lat"] + 0.027, 6.25 / 111_320
    ends = time.monotonic() + seconds
    while time.monotonic() < ends and not done():
        ws.write_message(location(lat, DESTINATION["lng"]))
        while (await recv(ws))["type"] != "location_update":
            pass
        lat -= step
        await asyncio.sleep(0.25)
    ws.close()


@pytest.mark.gen_test(timeout=60)
async def test_arriving_soon_is_told_once_the_eta_to_the_destination_is_under_the_setting(world, smtp):
    who = await people(world)
    parcel_id = await create(world, who)
    await to_transit(world, who, parcel_id)
    await smtp.wait_for(1)
    # About 2.5 minutes away, 3 km from the door: far outside its geofence.
    await drive_towards(world, who, parcel_id, WITHIN, done=lambda: len(smtp.messages) >= 2)
    arriving = (await smtp.wait_for(2))[1]
    assert "less than about 10 minutes" in check_common(arriving, "Your parcel is arriving soon")[0]


@settings(notify_arriving_minutes=1)
@pytest.mark.gen_test(timeout=60)
async def test_an_eta_over_the_setting_tells_nothing(world, smtp):
    who = await people(world)
    parcel_id = await create(world, who)
    await to_transit(world, who, parcel_id)
    await smtp.wait_for(1)
    await drive_towards(world, who, parcel_id, 5.0)  # about 2.5 minutes away: more than one
    await asyncio.sleep(0.5)
    assert len(smtp.messages) == 1 and "arriving" not in await entries(world, parcel_id)
    assert world.app.hub.arriving_within == 60


@pytest.mark.gen_test(timeout=60)
async def test_a_mail_server_that_never_answers_holds_up_no_api_answer(world, smtp):
    who = await people(world)
    parcel_id = await create(world, who)
    smtp.stop()
    silent = socket.socket()  # takes connections on the mail server's port, and never says a word
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", smtp.port))
    silent.listen(8)
    try:
        started = time.monotonic()
        await to_transit(world, who, parcel_id)  # four API answers
        assert time.monotonic() - started < 2.0
        await eventually(lambda: _state(world, parcel_id, "out_for_delivery", "pending"))
        await asyncio.sleep(0.5)  # far longer than a send to a server that answers takes
        sending = (await entries(world, parcel_id))["out_for_delivery"]
        assert sending["claimed_by"] and sending["attempts"] == 0  # its send is under way, waiting
        started = time.monotonic()
        assert (await world.api("GET", f"/api/parcels/{parcel_id}/", who.client)).code == 200
        assert time.monotonic() - started < 1.0
    finally:
        silent.close()  # the waiting connection is cut: that send fails and is tried again
    smtp.start()
    [out] = await smtp.wait_for(1)
    check_common(out, "Your parcel is out for delivery")
