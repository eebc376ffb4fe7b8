"""A shop's system (docs/protocol.md, "The recipient", "API keys", "Webhooks"): the recipient
changed with PATCH, API keys with their scopes, and signed webhooks delivered from the
outbox to real receivers on loopback, verified with the `standardwebhooks` package.

Every receiver here is a server of the test's own on 127.0.0.1; the production address
checks are tested with addresses that are refused before anything connects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import standardwebhooks
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from models import keys, outbox, parcels, webhooks
from models.access import READ, WRITE, User
from models.db import iso, parse_iso, utcnow
from realtime.events import TYPES, Event
from tests.conftest import World, body, refused, settings
from tests.helpers import another_server, expect_closed, expect_error, until

FAST = {"outbox_backoff": 0.3, "outbox_poll_every": 0.2}  # retries within a second, not after 10 s
PICKUP = {"lat": 28.61, "lng": 77.23, "address": "India Gate"}
DESTINATION = {"lat": 28.55, "lng": 77.20, "address": "Hauz Khas"}
CLOSED_TO_KEYS = "an API key may only read, create, import, update and cancel parcels"


# -- arranging -------------------------------------------------------------------------------


async def make_key(world: World, dispatcher: User, scopes: tuple[str, ...] = (READ, WRITE),
                   name: str = "Web shop") -> dict[str, Any]:
    made = await world.api("POST", "/api/keys/", dispatcher, {"name": name, "scopes": list(scopes)})
    assert made.code == 201, made.body
    return body(made)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def as_key(world: World, key: str, method: str, path: str, payload: Any = None, **kwargs: Any):
    return await world.api(method, path, body=payload, headers={**bearer(key), **kwargs.pop("headers", {})}, **kwargs)


async def new_parcel(world: World, key: str, owner: User, **extra: Any) -> dict[str, Any]:
    made = await as_key(world, key, "POST", "/api/parcels/",
                        {"owner_id": owner.id, "pickup": PICKUP, "destination": DESTINATION, **extra})
    assert made.code == 201, made.body
    return body(made)


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 5.0) -> Any:
    """The first truthy result of `check()`, asked every 50 ms; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)
    return result


class Receiver:
    """A webhook endpoint on loopback: records each request (headers, body, when) and answers
    with `codes` in turn, then 200."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.got: list[tuple[dict[str, str], bytes, float]] = []
        receiver = self

        class Endpoint(tornado.web.RequestHandler):
            def post(self) -> None:
                receiver.got.append((dict(self.request.headers), self.request.body, time.monotonic()))
                self.set_status(receiver.codes.pop(0) if receiver.codes else 200)
                self.finish("ok")

        sock, self.port = bind_unused_port()
        self.server = HTTPServer(tornado.web.Application([(r"/hook", Endpoint)]))
        self.server.add_sockets([sock])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self, secret: str) -> list[dict[str, Any]]:
        """What arrived, each verified with the hook's secret as a receiver would (raises if one is not)."""
        return [standardwebhooks.Webhook(secret).verify(raw, headers) for headers, raw, _ in self.got]

    def stop(self) -> None:
        self.server.stop()


class Silent:
    """An endpoint that accepts connections and never answers (a hung receiver); counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.release = asyncio.Event()

    async def start(self) -> Silent:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            await self.release.wait()
            writer.close()

        self.server = await asyncio.start_server(hang, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.release.set()
        self.server.close()


async def add_hook(world: World, dispatcher: User, url: str,
                   events: tuple[str, ...] | list[str] = TYPES) -> dict[str, Any]:
    made = await world.api("POST", "/api/webhooks/", dispatcher, {"url": url, "events": list(events)})
    assert made.code == 201, made.body
    return body(made)


# -- API keys --------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_key_is_shown_once_listed_without_its_secret_and_stored_hashed(world: World) -> None:
    dispatcher, client, driver = [await world.user(role) for role in ("dispatcher", "client", "driver")]
    made = await make_key(world, dispatcher, (WRITE, READ, READ), name="  Web shop  ")
    assert set(made) == {"id", "name", "scopes", "key"}
    assert made["name"] == "Web shop" and made["scopes"] == [READ, WRITE]
    assert made["key"].startswith(f"pk_{made['id']}_") and len(made["key"]) > 40

    listed = body(await world.api("GET", "/api/keys/", dispatcher))
    assert listed == [{"id": made["id"], "name": "Web shop", "scopes": [READ, WRITE],
                       "created_at": listed[0]["created_at"], "last_used_at": None, "revoked": False,
                       "revoked_at": None}]
    stored = await world.app.db.api_keys.find_one({"_id": made["id"]})
    secret = made["key"].split("_", 2)[2]
    assert stored["hash"] == hashlib.sha256(made["key"].encode()).hexdigest()
    assert made["key"] not in repr(stored) and secret not in repr(stored)

    second = await make_key(world, dispatcher, (READ,), name="Warehouse")
    assert [k["id"] for k in body(await world.api("GET", "/api/keys/", dispatcher))] == [second["id"], made["id"]]
    wrong_secret = made["key"][:-4] + ("AAAA" if not made["key"].endswith("AAAA") else "BBBB")
    other_id = f"pk_{made['id']}_" + second["key"].split("_", 2)[2]  # one key's secret, another's id
    for key in (wrong_secret, other_id, "pk_999_" + secret):
        assert refused(await as_key(world, key, "GET", "/api/parcels/"), 401) == "the API key is not valid"

    for person in (client, driver):
        for method, path, payload in (("GET", "/api/keys/", None),
                                      ("POST", "/api/keys/", {"name": "x", "scopes": [READ]}),
                                      ("DELETE", f"/api/keys/{made['id']}/", None)):
            assert "only a dispatcher" in refused(await world.api(method, path, person, payload), 403)
    for bad, problem in (({"scopes": [READ]}, "name is required"),
                         ({"name": "x" * 101, "scopes": [READ]}, "at most 100"),
                         ({"name": "a\nb", "scopes": [READ]}, "one line"), ({"name": "x"}, "scopes must be a list"),
                         ({"name": "x", "scopes": []}, "scopes must be a list"),
                         ({"name": "x", "scopes": ["parcels:delete"]}, "'parcels:delete'"),
                         ({"name": "x", "scopes": READ}, "scopes must be a list")):
        assert problem in refused(await world.api("POST", "/api/keys/", dispatcher, bad), 400), bad
    assert await world.app.db.api_keys.count_documents({}) == 2  # the refused ones stored nothing


@pytest.mark.gen_test
async def test_a_key_acts_as_a_dispatcher_within_its_scopes(world: World) -> None:
    dispatcher, client = await world.user("dispatcher"), await world.user("client", email="shop-client@example.test")
    key = (await make_key(world, dispatcher))["key"]
    parcel = await new_parcel(world, key, client, recipient={"name": "Asha"})
    assert parcel["owner_id"] == client.id and parcel["recipient"]["name"] == "Asha"
    assert body(await as_key(world, key, "GET", f"/api/parcels/{parcel['id']}/"))["id"] == parcel["id"]
    assert [p["id"] for p in body(await as_key(world, key, "GET", "/api/parcels/"))] == [parcel["id"]]
    assert body(await as_key(world, key, "GET", f"/api/parcels/{parcel['id']}/locations/")) == {"locations": []}
    changed = await as_key(world, key, "PATCH", f"/api/parcels/{parcel['id']}/", {"recipient": {"phone": "+91 98100"}})
    assert body(changed)["recipient"] == {"name": "Asha", "email": None, "phone": "+91 98100"}
    csv = ("client_email,pickup_lat,pickup_lng,pickup_address,destination_lat,destination_lng,destination_address\n"
           f"{client.email},28.6,77.2,A,28.5,77.1,B\n")
    imported = await as_key(world, key, "POST", "/api/parcels/import/", raw=csv.encode(),
                            headers={"Content-Type": "text/csv"})
    assert imported.code == 201 and body(imported)["created"] == 1, imported.body
    cancelled = await as_key(world, key, "POST", f"/api/parcels/{parcel['id']}/status/", {"status": "cancelled"})
    assert body(cancelled)["status"] == "cancelled"

    reader = (await make_key(world, dispatcher, (READ,)))["key"]
    writer = (await make_key(world, dispatcher, (WRITE,)))["key"]
    assert (await as_key(world, reader, "GET", f"/api/parcels/{parcel['id']}/")).code == 200
    assert (await as_key(world, reader, "GET", f"/api/parcels/{parcel['id']}/locations/")).code == 200
    for method, path, payload in (("POST", "/api/parcels/", {"owner_id": client.id, "pickup": PICKUP,
                                                              "destination": DESTINATION}),
                                  ("PATCH", f"/api/parcels/{parcel['id']}/", {"recipient": None}),
                                  ("POST", f"/api/parcels/{parcel['id']}/status/", {"status": "cancelled"})):
        message = refused(await as_key(world, reader, method, path, payload), 403)
        assert message == "this API key lacks the parcels:write scope", (method, path)
    for path in ("/api/parcels/", f"/api/parcels/{parcel['id']}/", f"/api/parcels/{parcel['id']}/locations/"):
        assert refused(await as_key(world, writer, "GET", path), 403) == "this API key lacks the parcels:read scope"
    assert (await new_parcel(world, writer, client))["status"] == "pending"


@pytest.mark.gen_test
async def test_a_key_is_refused_everywhere_but_parcels(world: World) -> None:
    dispatcher, client, driver = [await world.user(role) for role in ("dispatcher", "client", "driver")]
    key = (await make_key(world, dispatcher))["key"]
    parcel = await world.parcel(client, driver, status="in_transit")
    pid = parcel["_id"]
    hook = await add_hook(world, dispatcher, "http://127.0.0.1:9/hook")
    for method, path, payload in [
        ("GET", "/api/me/", None), ("POST", "/api/me/password/", {"password": "x", "new_password": "y" * 10}),
        ("GET", "/api/users/", None), ("POST", "/api/users/", {"email": "n@example.test", "password": "p" * 10,
                                                                "role": "client"}),
        ("POST", f"/api/users/{client.id}/role/", {"role": "driver"}),
        ("POST", f"/api/users/{client.id}/deactivate/", None),
        ("GET", "/api/keys/", None), ("POST", "/api/keys/", {"name": "more", "scopes": [READ]}),
        ("DELETE", "/api/keys/1/", None),
        ("GET", "/api/webhooks/", None),
        ("POST", "/api/webhooks/", {"url": "http://127.0.0.1:9/", "events": ["parcel.created"]}),
        ("DELETE", f"/api/webhooks/{hook['id']}/", None), ("GET", f"/api/webhooks/{hook['id']}/deliveries/", None),
        ("POST", f"/api/parcels/{pid}/assign/", {"driver_id": driver.id}),
        ("PUT", f"/api/drivers/{driver.id}/route/", {"parcels": [pid]}),
        ("POST", f"/api/parcels/{pid}/share/", None), ("DELETE", f"/api/parcels/{pid}/share/", None),
        ("GET", f"/api/parcels/{pid}/proof/photo", None), ("GET", "/api/token/ws/", None),
    ]:
        assert refused(await as_key(world, key, method, path, payload), 403).startswith(CLOSED_TO_KEYS), (method, path)
    for status in ("delivered", "failed"):  # a key cancels; moving a parcel on is its driver's
        moved = await as_key(world, key, "POST", f"/api/parcels/{pid}/status/", {"status": status, "reason": "other"})
        refused(moved, 403)
    for path in ("/dispatch", "/dispatch/integrations", "/parcels", f"/parcels/{pid}/track"):
        page = await as_key(world, key, "GET", path)
        assert page.code == 403 and b"API key" in page.body, path
    for socket_path in ("/ws/tracking/", "/ws/driver/", "/ws/dispatch/"):
        ws = await world.socket(pid, key, path=socket_path)
        assert "API key" in await expect_error(ws)
        await expect_closed(ws, 4403)
    assert (await parcels.get_parcel(world.app.db, pid))["status"] == "in_transit"  # nothing was changed
    assert [k["id"] for k in body(await world.api("GET", "/api/keys/", dispatcher))] == [1]


@pytest.mark.gen_test
async def test_a_revoked_key_is_refused_at_once_by_every_process(world: World, db_server: str) -> None:
    dispatcher, client = await world.user("dispatcher"), await world.user("client")
    made = await make_key(world, dispatcher)
    async with another_server(world, db_server) as other:
        assert (await as_key(other, made["key"], "GET", "/api/parcels/")).code == 200
        revoked = await world.api("DELETE", f"/api/keys/{made['id']}/", dispatcher)
        assert revoked.code == 204 and revoked.body == b""
        for process in (world, other):
            message = refused(await as_key(process, made["key"], "POST", "/api/parcels/",
                                           {"owner_id": client.id, "pickup": PICKUP, "destination": DESTINATION}), 401)
            assert message == "the API key has been revoked"
    listed = body(await world.api("GET", "/api/keys/", dispatcher))[0]
    assert listed["revoked"] is True and listed["revoked_at"] is not None
    assert (await world.api("DELETE", f"/api/keys/{made['id']}/", dispatcher)).code == 204  # again: the same
    refused(await world.api("DELETE", "/api/keys/999/", dispatcher), 404)
    assert await world.app.db.parcels.count_documents({}) == 0


@pytest.mark.gen_test
async def test_a_keys_last_use_is_written_at_most_once_a_minute(world: World) -> None:
    dispatcher = await world.user("dispatcher")
    made = await make_key(world, dispatcher)

    async def last_used() -> Any:
        return body(await world.api("GET", "/api/keys/", dispatcher))[0]["last_used_at"]

    assert await last_used() is None
    assert (await as_key(world, made["key"], "GET", "/api/parcels/")).code == 200
    first = await eventually(last_used)
    for _ in range(3):
        assert (await as_key(world, made["key"], "GET", "/api/parcels/")).code == 200
    await asyncio.sleep(0.3)  # a write of the use would have landed by now
    assert await last_used() == first
    an_hour_ago = iso(utcnow() - timedelta(hours=1))
    await world.app.db.api_keys.update_one({"_id": made["id"]}, {"$set": {"last_used_at": parse_iso(an_hour_ago)}})
    assert (await as_key(world, made["key"], "GET", "/api/parcels/")).code == 200

    async def written_again() -> Any:
        shown = await last_used()
        return shown if shown != an_hour_ago else None

    assert await eventually(written_again) > first
    # The write's guard holds for every process: a use noted within the minute is not written again.
    assert not await keys.record_use(world.app.db, await keys.get_key(world.app.db, made["id"]), utcnow())


# -- the recipient -----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_the_owner_changes_the_recipient_before_pickup_and_a_dispatcher_at_any_time(world: World) -> None:
    client, driver, dispatcher, stranger = [await world.user(r) for r in ("client", "driver", "dispatcher", "client")]
    parcel = await world.parcel(client, driver, status="assigned")
    path = f"/api/parcels/{parcel['_id']}/"

    async def recipient() -> Any:
        return (await parcels.get_parcel(world.app.db, parcel["_id"]))["recipient"]

    changed = await world.api("PATCH", path, client,
                              {"recipient": {"name": "Asha Verma", "email": "Asha@Example.TEST"}})
    assert changed.code == 200, changed.body
    assert body(changed)["recipient"] == {"name": "Asha Verma", "email": "asha@example.test", "phone": None}
    assert body(changed)["id"] == parcel["_id"] and body(changed)["status"] == "assigned"
    merged = body(await world.api("PATCH", path, client, {"recipient": {"phone": "+91 98100 12345", "name": None}}))
    assert merged["recipient"] == {"name": None, "email": "asha@example.test", "phone": "+91 98100 12345"}
    for bad, problem in (({"recipient": {"email": "not-an-address"}}, "recipient.email"),
                         ({"recipient": {"phone": "call me"}}, "recipient.phone"),
                         ({"recipient": {"address": "x"}}, "recipient must be an object"),
                         ({"recipient": "Asha"}, "recipient must be an object"),
                         ({"recipient": {"name": "x" * 101}}, "recipient.name"),
                         ({"note": "ring twice"}, "only the recipient"),
                         ({"recipient": None, "note": "x"}, "only the recipient"), ({}, "only the recipient")):
        assert problem in refused(await world.api("PATCH", path, client, bad), 400), bad
    assert await recipient() == {"name": None, "email": "asha@example.test", "phone": "+91 98100 12345"}
    refused(await world.api("PATCH", path, driver, {"recipient": None}), 403)
    refused(await world.api("PATCH", path, stranger, {"recipient": None}), 404)  # not theirs: not there at all
    refused(await world.api("PATCH", "/api/parcels/999999/", dispatcher, {"recipient": None}), 404)

    await parcels.set_status(world.app.db, parcel["_id"], "picked_up")
    assert "only a dispatcher" in refused(await world.api("PATCH", path, client, {"recipient": {"name": "B"}}), 409)
    by_dispatcher = await world.api("PATCH", path, dispatcher, {"recipient": {"name": "Ravi"}})
    assert body(by_dispatcher)["recipient"]["name"] == "Ravi"
    assert body(await world.api("PATCH", path, dispatcher, {"recipient": None}))["recipient"] is None
    assert await recipient() is None
    # The owner's change is guarded by the status in the write itself: a pickup meanwhile wins.
    with pytest.raises(parcels.TransitionRefused):
        await parcels.set_recipient(world.app.db, parcel["_id"], {"name": "Late", "email": None, "phone": None},
                                    ("pending", "assigned"))
    assert await recipient() is None


# -- webhooks: the hooks -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_webhooks_are_made_listed_deleted_and_their_secret_shown_once(world: World) -> None:
    dispatcher, client = await world.user("dispatcher"), await world.user("client")
    made = await add_hook(world, dispatcher, "http://127.0.0.1:9/hook", ["parcel.delivered", "parcel.created"])
    assert made["secret"].startswith("whsec_") and made["events"] == ["parcel.created", "parcel.delivered"]
    standardwebhooks.Webhook(made["secret"])  # a secret the library takes
    listed = body(await world.api("GET", "/api/webhooks/", dispatcher))
    assert listed == [{k: v for k, v in made.items() if k != "secret"}]
    assert body(await world.api("GET", f"/api/webhooks/{made['id']}/deliveries/", dispatcher)) == []
    for bad, problem in (({"events": ["parcel.created"]}, "url is required"),
                         ({"url": "ftp://shop.example/", "events": ["parcel.created"]}, "https://"),
                         ({"url": "shop.example/hooks", "events": ["parcel.created"]}, "https://"),
                         ({"url": "http://user:pw@127.0.0.1/", "events": ["parcel.created"]}, "user name"),
                         ({"url": "http://127.0.0.1:99999/", "events": ["parcel.created"]}, "port"),
                         ({"url": "http://127.0.0.1/ x", "events": ["parcel.created"]}, "spaces"),
                         ({"url": "http://127.0.0.1/"}, "events must be a list"),
                         ({"url": "http://127.0.0.1/", "events": []}, "events must be a list"),
                         ({"url": "http://127.0.0.1/", "events": ["parcel.lost"]}, "'parcel.lost'")):
        assert problem in refused(await world.api("POST", "/api/webhooks/", dispatcher, bad), 400), bad
    refused(await world.api("POST", "/api/webhooks/", client,
                            {"url": "http://127.0.0.1/", "events": ["parcel.created"]}), 403)
    refused(await world.api("GET", "/api/webhooks/", client), 403)
    refused(await world.api("GET", f"/api/webhooks/{made['id']}/deliveries/", client), 403)
    refused(await world.api("DELETE", f"/api/webhooks/{made['id']}/", client), 403)
    for _ in range(webhooks.MAX_WEBHOOKS - 1):
        await add_hook(world, dispatcher, "http://127.0.0.1:9/hook")
    assert "delete one first" in refused(await world.api("POST", "/api/webhooks/", dispatcher,
                                                         {"url": "http://127.0.0.1:9/", "events": list(TYPES)}), 409)
    deleted = await world.api("DELETE", f"/api/webhooks/{made['id']}/", dispatcher)
    assert deleted.code == 204
    refused(await world.api("DELETE", f"/api/webhooks/{made['id']}/", dispatcher), 404)
    refused(await world.api("GET", f"/api/webhooks/{made['id']}/deliveries/", dispatcher), 404)
    assert len(body(await world.api("GET", "/api/webhooks/", dispatcher))) == webhooks.MAX_WEBHOOKS - 1


@settings(app_env="production")
@pytest.mark.gen_test
async def test_in_production_a_webhook_must_be_https_to_a_public_address(world: World) -> None:
    dispatcher = await world.user("dispatcher")
    for url, problem in [
        ("http://hooks.shop.example/parcels", "must be an https:// URL"),
        ("https://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("https://127.0.0.1:8443/hook", "127.0.0.1 is a loopback address"),
        ("https://localhost/hook", "localhost resolves to"),
        ("https://10.1.2.3/hook", "10.1.2.3 is a private address"),
        ("https://192.168.0.10/hook", "private address"),
        ("https://172.16.5.4/hook", "private address"),
        ("https://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("https://[::1]/hook", "::1 is a loopback address"),
        ("https://[::ffff:10.0.0.1]/hook", "private address"),
        ("https://[fe80::1]/hook", "link-local"),
        ("https://0.0.0.0/hook", "reserved"),
        ("https://100.64.0.1/hook", "address"),  # shared address space (carrier NAT): not on the internet
    ]:
        message = refused(await world.api("POST", "/api/webhooks/", dispatcher,
                                          {"url": url, "events": ["parcel.created"]}), 400)
        assert message.startswith("url ") and problem in message, (url, message)
    assert await world.app.db.webhooks.count_documents({}) == 0
    page = await world.page("/dispatch/integrations/webhooks", dispatcher, "POST",
                            {"url": "https://10.0.0.7/", "events": "parcel.created"})
    assert page.code == 400 and b"10.0.0.7 is a private address" in page.body
    assert await world.app.db.webhooks.count_documents({}) == 0


@settings(app_env="production", **FAST)
@pytest.mark.gen_test
async def test_in_production_each_send_checks_the_address_again(world: World) -> None:
    """A hook whose host now resolves to a private address (DNS changed since it was made) is
    not sent to: no connection is even opened, and the attempt says why."""
    dispatcher, client = await world.user("dispatcher"), await world.user("client")
    listener = await Silent().start()
    try:
        hooks = [await webhooks.create(world.app.db, url=url, events=["parcel.created"], created_by=dispatcher.id,
                                       now=utcnow())  # as if made while they resolved elsewhere
                 for url in (f"https://localhost:{listener.port}/hook", f"https://127.0.0.1:{listener.port}/hook",
                             f"http://127.0.0.1:{listener.port}/hook")]
        world.app.events.created(await world.parcel(client))
        for hook, problem in zip(hooks, ("localhost resolves to 127.0.0.1", "127.0.0.1 is a loopback address",
                                         "the URL is not https://"), strict=True):
            tried = await eventually(lambda hook=hook: webhooks.attempts(world.app.db, hook["_id"]))
            assert tried[0]["status"] is None and problem in tried[0]["error"], tried[0]
        assert listener.connections == 0
    finally:
        await listener.stop()


# -- webhooks: delivery --------------------------------------------------------------------------


@settings(**FAST)
@pytest.mark.gen_test(timeout=30)
async def test_a_receiver_gets_each_event_of_a_parcel_made_with_a_key_signed(world: World) -> None:
    dispatcher, client, driver = [await world.user(role) for role in ("dispatcher", "client", "driver")]
    receiver = Receiver()
    others = Receiver()
    try:
        hook = await add_hook(world, dispatcher, receiver.url)
        only_delivered = await add_hook(world, dispatcher, others.url, ["parcel.delivered"])
        key = (await make_key(world, dispatcher))["key"]
        parcel = await new_parcel(world, key, client, recipient={"name": "Asha", "email": "asha@example.test"})
        pid = parcel["id"]
        assigned = await world.api("POST", f"/api/parcels/{pid}/assign/", dispatcher, {"driver_id": driver.id})
        assert assigned.code == 200
        for status in ("picked_up", "in_transit"):
            assert (await world.api("POST", f"/api/parcels/{pid}/status/", driver, {"status": status})).code == 200
        ws = await world.socket(pid, world.token(driver))
        assert json.loads(await ws.read_message())["type"] == "subscribed"
        ws.write_message(json.dumps({"type": "location_update", **{k: DESTINATION[k] for k in ("lat", "lng")}}))
        await until(lambda: len(receiver.got) >= 5, within=10)  # created, assigned, picked up, in transit, arriving
        ws.close()
        assert (await world.api("POST", f"/api/parcels/{pid}/status/", driver, {"status": "delivered"})).code == 200
        await until(lambda: len(receiver.got) == 7 and len(others.got) == 1, within=10)
        await asyncio.sleep(0.5)  # the outbox looks every 0.2 s: a second copy of any would be here by now

        told = receiver.events(hook["secret"])
        assert len(told) == 7 and all(set(t) == {"type", "timestamp", "data"} for t in told)
        assert sorted(t["type"] for t in told) == sorted(["parcel.created", *["parcel.status_changed"] * 4,
                                                          "parcel.arriving", "parcel.delivered"])
        assert all(t["data"]["id"] == pid and t["data"]["recipient"]["email"] == "asha@example.test" for t in told)
        assert sorted(t["data"]["status"] for t in told if t["type"] == "parcel.status_changed") == \
            sorted(["assigned", "picked_up", "in_transit", "delivered"])
        created = next(t for t in told if t["type"] == "parcel.created")
        assert created["data"]["status"] == "pending" and created["data"]["owner_id"] == client.id
        delivered = next(t for t in told if t["type"] == "parcel.delivered")
        shown = body(await world.api("GET", f"/api/parcels/{pid}/", dispatcher))
        del shown["last_location"], delivered["data"]["last_location"]  # written when the driver's socket closed
        assert delivered["data"] == shown  # the parcel as the API shows it to a dispatcher
        ids = [headers["Webhook-Id"] for headers, _, _ in receiver.got]
        assert len(set(ids)) == 7 and all(i.startswith("msg_") for i in ids)
        for headers, _, _ in receiver.got:
            assert headers["Content-Type"] == "application/json"
            assert abs(int(headers["Webhook-Timestamp"]) - time.time()) < 60
            assert headers["Webhook-Signature"].startswith("v1,")
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            receiver.events(only_delivered["secret"])  # another hook's secret does not verify them
        assert [t["type"] for t in others.events(only_delivered["secret"])] == ["parcel.delivered"]

        attempts = body(await world.api("GET", f"/api/webhooks/{hook['id']}/deliveries/", dispatcher))
        assert len(attempts) == 7 and all(a["status"] == 200 and a["error"] is None for a in attempts)
        assert sorted(a["webhook_id"] for a in attempts) == sorted(ids)
        assert [a["at"] for a in attempts] == sorted((a["at"] for a in attempts), reverse=True)
    finally:
        receiver.stop()
        others.stop()


@settings(**FAST)
@pytest.mark.gen_test(timeout=30)
async def test_a_failed_delivery_is_tried_again_with_the_same_webhook_id(world: World) -> None:
    dispatcher, client = await world.user("dispatcher"), await world.user("client")
    receiver = Receiver(500, 503)
    try:
        hook = await add_hook(world, dispatcher, receiver.url, ["parcel.created"])
        key = (await make_key(world, dispatcher))["key"]
        await new_parcel(world, key, client)
        await until(lambda: len(receiver.got) == 3, within=10)
        told = receiver.events(hook["secret"])  # each attempt signed anew, each valid
        assert [t["type"] for t in told] == ["parcel.created"] * 3
        assert len({headers["Webhook-Id"] for headers, _, _ in receiver.got}) == 1
        arrived = [at for _, _, at in receiver.got]
        assert arrived[1] - arrived[0] >= 0.25 and arrived[2] - arrived[1] >= 0.5  # after the backoff, doubled
        attempts = body(await world.api("GET", f"/api/webhooks/{hook['id']}/deliveries/", dispatcher))
        assert [a["status"] for a in attempts] == [200, 503, 500]  # newest first
        assert len({a["webhook_id"] for a in attempts}) == 1
        await asyncio.sleep(1.0)  # retries come within 0.3 s, 0.6 s: one more would be here by now
        assert len(receiver.got) == 3
    finally:
        receiver.stop()


@settings(**FAST)
@pytest.mark.gen_test(timeout=30)
async def test_a_dead_endpoint_does_not_delay_another_hook(world: World) -> None:
    dispatcher, client = await world.user("dispatcher"), await world.user("client")
    silent = await Silent().start()
    receiver = Receiver()
    try:
        dead = await add_hook(world, dispatcher, f"http://127.0.0.1:{silent.port}/hook", ["parcel.created"])
        live = await add_hook(world, dispatcher, receiver.url, ["parcel.created"])
        key = (await make_key(world, dispatcher))["key"]
        started = time.monotonic()
        await new_parcel(world, key, client)
        await new_parcel(world, key, client)
        await until(lambda: len(receiver.got) == 2 and silent.connections == 2, within=5)
        assert time.monotonic() - started < 2.0  # the hung endpoint holds its own sends only
        assert [t["type"] for t in receiver.events(live["secret"])] == ["parcel.created"] * 2
        assert await webhooks.attempts(world.app.db, dead["id"]) == []  # still waiting for an answer
    finally:
        await silent.stop()
        receiver.stop()


@settings(**FAST)
@pytest.mark.gen_test(timeout=30)
async def test_a_deleted_hooks_queued_entries_are_dropped(world: World) -> None:
    dispatcher, client = await world.user("dispatcher"), await world.user("client")
    receiver = Receiver(*[500] * 100)
    try:
        hook = await add_hook(world, dispatcher, receiver.url, ["parcel.created"])
        await world.api("POST", "/api/parcels/", dispatcher,
                        {"owner_id": client.id, "pickup": PICKUP, "destination": DESTINATION})
        await until(lambda: len(receiver.got) == 1, within=5)
        assert (await world.api("DELETE", f"/api/webhooks/{hook['id']}/", dispatcher)).code == 204
        entry = await eventually(lambda: world.app.db.outbox.find_one({"_id": {"$regex": "^webhook:"},
                                                                       "state": "dropped"}))
        assert entry["last_error"] == "the webhook was deleted"
        tried = len(receiver.got)
        await asyncio.sleep(1.0)
        assert len(receiver.got) == tried <= 2  # at most the retry that was under way when it went
    finally:
        receiver.stop()


@settings(**FAST)
@pytest.mark.gen_test
async def test_an_event_told_twice_is_sent_once(world: World) -> None:
    """Two processes noticing one status change tell it twice; its key (the step) is the same."""
    dispatcher, client, driver = [await world.user(role) for role in ("dispatcher", "client", "driver")]
    receiver = Receiver()
    try:
        await add_hook(world, dispatcher, receiver.url, ["parcel.status_changed", "parcel.arriving"])
        parcel = await world.parcel(client, driver, status="in_transit")
        step = len(parcel["timeline"])
        for _ in range(2):
            await world.app.webhooks.record(Event("parcel.status_changed", parcel["_id"], utcnow(), step))
            await world.app.webhooks.record(Event("parcel.arriving", parcel["_id"], utcnow()))
        await until(lambda: len(receiver.got) == 2, within=5)
        await asyncio.sleep(0.5)
        assert len(receiver.got) == 2
        assert await world.app.db.outbox.count_documents({"_id": {"$regex": "^webhook:"}}) == 2
    finally:
        receiver.stop()


@pytest.mark.gen_test
async def test_a_hook_keeps_its_last_100_attempts(world: World) -> None:
    dispatcher = await world.user("dispatcher")
    hook = await webhooks.create(world.app.db, url="http://127.0.0.1:9/", events=list(TYPES), created_by=dispatcher.id,
                                 now=utcnow())
    other = await webhooks.create(world.app.db, url="http://127.0.0.1:9/", events=list(TYPES),
                                  created_by=dispatcher.id, now=utcnow())
    start = utcnow() - timedelta(hours=1)
    for n in range(130):
        payload = {"type": "parcel.created", "data": {"id": n}, "webhook_id": f"msg_{n}"}
        await webhooks.record_attempt(world.app.db, hook["_id"], payload, 500 if n % 2 else 200, None,
                                      start + timedelta(seconds=n), 5)
    await webhooks.record_attempt(world.app.db, other["_id"], {"type": "parcel.created", "data": {"id": 1},
                                                               "webhook_id": "msg_x"}, None, "refused", utcnow(), 1)
    shown = body(await world.api("GET", f"/api/webhooks/{hook['_id']}/deliveries/", dispatcher))
    assert [a["parcel_id"] for a in shown] == list(range(129, 29, -1))
    assert shown[0] == {"event": "parcel.created", "parcel_id": 129, "webhook_id": "msg_129", "status": 500,
                        "error": None, "at": shown[0]["at"], "duration_ms": 5}
    assert await world.app.db.webhook_deliveries.count_documents({"hook_id": hook["_id"]}) == 100
    others = body(await world.api("GET", f"/api/webhooks/{other['_id']}/deliveries/", dispatcher))
    assert [a["error"] for a in others] == ["refused"]


# -- the page ----------------------------------------------------------------------------------


def shown_once(page: Any, box: str) -> str:
    """The key or secret a page shows once, in its box (`new-key`, `new-hook`)."""
    found = re.search(rf'id="{box}-value"[^>]*>([^<]*)</textarea>', page.body.decode())
    assert found, page.body[:2000]
    return found[1]


@pytest.mark.gen_test
async def test_the_integrations_page_makes_lists_and_revokes_keys(world: World) -> None:
    dispatcher, client = await world.user("dispatcher"), await world.user("client")
    page = await world.page("/dispatch/integrations", dispatcher)
    assert page.code == 200 and b"No API keys yet." in page.body and b"No webhooks yet." in page.body
    assert b'href="/dispatch/integrations" aria-current="page"' in page.body
    assert (await world.page("/dispatch/integrations", client)).code == 403

    wrong = await world.page("/dispatch/integrations/keys", dispatcher, "POST", {"name": "Web\tshop"})
    assert wrong.code == 400
    assert b"The name must be plain text on one line." in wrong.body
    assert b"Choose at least one of the two." in wrong.body
    assert b'value="Web\tshop"' in wrong.body and await world.app.db.api_keys.count_documents({}) == 0
    made = await world.page("/dispatch/integrations/keys", dispatcher, "POST",
                            {"name": "Web shop", "scopes": READ})
    assert made.code == 200
    key = shown_once(made, "new-key")
    assert keys.looks_like_key(key) and b"shown only this once" in made.body
    assert (await as_key(world, key, "GET", "/api/parcels/")).code == 200
    again = await world.page("/dispatch/integrations", dispatcher)
    assert key.encode() not in again.body and b"Web shop" in again.body and b"parcels:read" in again.body

    asked = await world.page("/dispatch/integrations/keys/1/revoke", dispatcher, "POST")
    assert asked.code == 200 and b"Revoke the key" in asked.body and b'name="confirmed" value="yes"' in asked.body
    assert (await as_key(world, key, "GET", "/api/parcels/")).code == 200  # not before the yes
    revoked = await world.page("/dispatch/integrations/keys/1/revoke", dispatcher, "POST", {"confirmed": "yes"})
    assert revoked.code == 303 and revoked.headers["Location"].startswith("/dispatch/integrations?revoked=1")
    assert refused(await as_key(world, key, "GET", "/api/parcels/"), 401) == "the API key has been revoked"
    shown = await world.page(revoked.headers["Location"].split("#")[0], dispatcher)
    assert "The key “Web shop” is revoked".encode() in shown.body and b"Revoked</span>" in shown.body
    missing = await world.page("/dispatch/integrations/keys/9/revoke", dispatcher, "POST", {"confirmed": "yes"})
    assert missing.code == 404
    assert (await world.page("/dispatch/integrations/keys", client, "POST", {"name": "x", "scopes": READ})).code == 403


@pytest.mark.gen_test
async def test_the_integrations_page_adds_shows_and_deletes_webhooks(world: World) -> None:
    dispatcher = await world.user("dispatcher")
    wrong = await world.page("/dispatch/integrations/webhooks", dispatcher, "POST", {"url": "ftp://x.example/"})
    assert wrong.code == 400 and b"The URL must be an https:// URL" in wrong.body
    assert b"Choose at least one event." in wrong.body and b'value="ftp://x.example/"' in wrong.body
    made = await world.page("/dispatch/integrations/webhooks", dispatcher, "POST",
                            {"url": "http://127.0.0.1:9/hook", "events": "parcel.delivered"})
    assert made.code == 200
    secret = shown_once(made, "new-hook")
    hook = await webhooks.get_hook(world.app.db, 1)
    assert secret == hook["secret"] and hook["events"] == ["parcel.delivered"]
    await webhooks.record_attempt(world.app.db, 1, {"type": "parcel.created", "data": {"id": 7}, "webhook_id": "msg_1"},
                                  None, "Timeout while connecting", utcnow(), 9000)
    page = await world.page("/dispatch/integrations", dispatcher)
    assert secret.encode() not in page.body and b"http://127.0.0.1:9/hook" in page.body
    assert b"Timeout while connecting" in page.body and b"the latest failed" in page.body and b"#7" in page.body
    asked = await world.page("/dispatch/integrations/webhooks/1/delete", dispatcher, "POST")
    assert asked.code == 200 and b"Delete the webhook to http://127.0.0.1:9/hook?" in asked.body
    deleted = await world.page("/dispatch/integrations/webhooks/1/delete", dispatcher, "POST", {"confirmed": "yes"})
    assert deleted.code == 303 and await webhooks.get_hook(world.app.db, 1) is None
    assert b"No webhooks yet." in (await world.page("/dispatch/integrations?deleted=1", dispatcher)).body


def test_an_outbox_entry_names_what_it_sends() -> None:
    """The sender's pieces, without a network: the body, the stable id, the signature a library verifies."""
    secret = webhooks.new_secret()
    key = "webhook:1:parcel.created:5:1"
    payload = {"hook_id": 1, "type": "parcel.created", "webhook_id": webhooks.message_id(key),
               "timestamp": "2026-01-08T10:15:30.123Z", "data": {"id": 5}}
    assert payload["webhook_id"] == webhooks.message_id(key) != webhooks.message_id(key.replace(":1:", ":2:"))
    text = webhooks.body(payload)
    headers = webhooks.signed_headers(secret, payload["webhook_id"], text, utcnow())
    assert standardwebhooks.Webhook(secret).verify(text, headers) == {
        "type": "parcel.created", "timestamp": "2026-01-08T10:15:30.123Z", "data": {"id": 5}}
    assert outbox.SEND_TIMEOUT > webhooks.SEND_WITHIN
