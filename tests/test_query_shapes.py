"""A guard that turns red on a collection scan (docs/protocol.md, "Query shapes").

The embedded database answers from an index in about a millisecond and scans in
Python without one, so a query without an index is a bug that grows with the data.
Its `explain()` cannot be trusted, but its profiler can: over a database seeded with
~20,000 parcels, ~20,000 samples and ~10,000 users a scan takes hundreds of
milliseconds and an indexed query a few. This test seeds one, turns the profiler on
with `slowms` between the two, runs every model function and every page and API list,
and fails naming each slow operation. Every public coroutine of the models is counted,
so a new one that this test does not run fails it too.
"""

from __future__ import annotations

import inspect
import io
import random
import time
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from PIL import Image

from auth import passwords, tokens
from models import imports, keys, locations, mail, outbox, parcels, proofs, shares, users, webhooks
from models.access import User
from models.db import utcnow
from realtime.events import Event
from tests.conftest import TEST_SECRET, World, settings

PARCELS = 20_000
USERS = 10_000
SAMPLES = 20_000
SLOW_MS = 120  # a scan here takes several hundred ms; an indexed query a few
MODULES = (parcels, users, locations, shares, proofs, imports, outbox, mail, keys, webhooks)


async def seed(world: World) -> dict[str, Any]:
    """A year of a small business, written straight with insert_many."""
    db, rng, now = world.app.db, random.Random(7), utcnow()
    password_hash = await passwords.hash_password("seed-pass", 4)
    roles = ["dispatcher"] * 10 + ["driver"] * 490 + ["client"] * (USERS - 500)
    people = [{"_id": i, "email": f"user{i}@seed.test", "name": f"User {i}", "role": role,
               "password_hash": password_hash, "created_at": now,
               "search": users.search_keys(f"user{i}@seed.test", f"User {i}")} for i, role in enumerate(roles, 1)]
    clients = [p["_id"] for p in people if p["role"] == "client"]
    drivers = [p["_id"] for p in people if p["role"] == "driver"]
    for start in range(0, USERS, 1000):
        await db.users.insert_many(people[start:start + 1000], ordered=False)
    await db.counters.update_one({"_id": "users"}, {"$set": {"value": USERS}})

    docs = []
    for i in range(1, PARCELS + 1):
        created = now - timedelta(minutes=(PARCELS - i) * 20)
        status = rng.choice(parcels.ACTIVE) if i > PARCELS - 300 else rng.choice(["delivered"] * 30 + ["cancelled"])
        driver = rng.choice(drivers) if status != "pending" else None
        docs.append({"_id": i, "seq": i, "owner_id": rng.choice(clients), "driver_id": driver, "status": status,
                     "pickup": {"lat": 28.6, "lng": 77.2, "address": "A"},
                     "destination": {"lat": 28.5, "lng": 77.1, "address": "B"},
                     "last_location": None, "created_at": created,
                     "timeline": [{"status": "pending", "timestamp": created}]})
    for start in range(0, PARCELS, 1000):
        await db.parcels.insert_many(docs[start:start + 1000], ordered=False)
    await db.counters.update_one({"_id": "parcels"}, {"$set": {"value": PARCELS}})

    moving = [d for d in docs[-300:] if d["status"] in ("picked_up", "in_transit")]
    samples = []
    for n in range(SAMPLES):
        parcel = moving[n % len(moving)]
        samples.append(locations.sample(parcel["_id"], parcel["driver_id"], {"lat": 28.5, "lng": 77.1, "address": ""},
                                        now - timedelta(seconds=25 * (SAMPLES - n))))
    for start in range(0, SAMPLES, 1000):  # through the model: parcels learn their history's extent
        await locations.store(db, samples[start:start + 1000])
    moving = [await parcels.get_parcel(db, p["_id"]) for p in moving[:3]]
    return {"people": {p["_id"]: p for p in people}, "parcels": docs, "moving": moving,
            "clients": clients, "drivers": drivers}


async def still_slow(db, op: dict[str, Any]) -> bool:
    """Is a slow operation slow again? On a busy machine an indexed query can take long
    once; a scan takes long every time. Its filter is run again as a query, three times."""
    command = op.get("command") or {}
    collection = op.get("ns", "").split(".", 1)[-1]
    if op.get("op") == "insert":
        return False  # an insert cannot scan
    statements = command.get("updates") or command.get("deletes") or [{"q": command.get("filter")}]
    queries = [statement.get("q") for statement in statements]
    if any(query is None for query in queries):
        return True  # nothing to run again: it stays suspect
    # A find is run again with its sort, limit and projection: `{}` sorted by `_id` and limited
    # is an index walk of a page, the same filter alone a read of the whole collection.
    shape = {key: command[key] for key in ("sort", "limit", "projection") if command.get(key) and "filter" in command}
    for query in queries:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            await db.db[collection].find(query, **shape).to_list(None)
            times.append((time.perf_counter() - started) * 1000)
        if min(times) >= SLOW_MS:
            return True
    return False


async def proofs_of_delivery(db: Any, parcel: dict[str, Any], driver: User) -> None:
    """A year of proofs in the bucket (20,000 files), then one recorded, replaced and read back."""
    files = [{"_id": ObjectId(), "length": 3, "chunkSize": 261120, "uploadDate": utcnow(),
              "filename": f"parcel-{n}-photo", "metadata": {"parcel_id": n, "kind": "photo"}} for n in range(20_000)]
    for start in range(0, len(files), 1000):
        await db.db["proofs.files"].insert_many(files[start:start + 1000], ordered=False)
        await db.db["proofs.chunks"].insert_many([{"files_id": f["_id"], "n": 0, "data": b"abc"}
                                                  for f in files[start:start + 1000]], ordered=False)
    drawn = io.BytesIO()
    Image.new("RGB", (2000, 1500), "red").save(drawn, "JPEG")
    photo = await proofs.clean_photo(drawn.getvalue())
    drawn = io.BytesIO()
    Image.new("LA", (600, 200)).save(drawn, "PNG")
    signature = await proofs.clean_signature(drawn.getvalue())
    assert (await proofs.clean_both(None, drawn.getvalue()))[1] == signature
    for name in ("First", "Second"):  # the second replaces the first, whose files are deleted
        proof = await proofs.record(db, parcel["_id"], driver.id, photo=photo, signature=signature, received_by=name,
                                    location=None)
    stored = await proofs.download(db, proof, "photo")
    assert b"".join([chunk async for chunk in stored.chunks]) == photo


async def outbox_and_addresses(db: Any) -> None:
    """A year of e-mails sent (20,000 entries, 5,000 addresses), then one queued, claimed,
    failed, postponed, sent, and an address unsubscribed."""
    now = utcnow()
    sent = [{"_id": f"email:{n}:0:delivered", "kind": "email", "payload": {}, "state": "sent", "attempts": 0,
             "due_at": now - timedelta(minutes=25 * n), "created_at": now - timedelta(minutes=25 * n),
             "give_up_at": now, "sent_at": now} for n in range(20_000)]
    for start in range(0, len(sent), 1000):
        await db.outbox.insert_many(sent[start:start + 1000], ordered=False)
    addresses = [{"_id": f"r{n}@seed.test", "token": f"seed-token-{n:06d}", "created_at": now, "unsubscribed_at": None}
                 for n in range(5_000)]
    await db.email_addresses.insert_many(addresses, ordered=False)
    assert await outbox.enqueue(db, "email:1:0:arriving", "email", {"to": "r1@seed.test"})
    assert await outbox.enqueue(db, "email:1:0:delivered-again", "email", {}, after="email:1:0:arriving")
    assert not await outbox.enqueue(db, "email:1:0:arriving", "email", {})
    claimed = await outbox.claim(db, ["email", "webhook"], "seed", utcnow(), 60)
    assert claimed["_id"] == "email:1:0:arriving"
    assert await outbox.mark_failed(db, claimed, "refused", utcnow(), 0.001) is not None
    claimed = await outbox.claim(db, ["email"], "seed", utcnow() + timedelta(seconds=1), 60)
    await outbox.postpone(db, claimed, utcnow())
    claimed = await outbox.claim(db, ["email"], "seed", utcnow() + timedelta(seconds=1), 60)
    assert await outbox.mark_sent(db, claimed, utcnow())
    claimed = await outbox.claim(db, ["email"], "seed", utcnow() + timedelta(seconds=1), 60)
    await outbox.mark_dropped(db, claimed, "the address unsubscribed", utcnow())
    assert (await outbox.get_entry(db, "email:1:0:arriving"))["attempts"] == 1
    assert await outbox.claim(db, ["email"], "seed", utcnow() + timedelta(seconds=1), 60) is None
    made = await mail.address(db, "New.Person@seed.test")
    assert (await mail.address(db, "new.person@seed.test"))["token"] == made["token"]
    assert (await mail.find_token(db, "seed-token-004999"))["_id"] == "r4999@seed.test"
    assert (await mail.unsubscribe(db, made["token"]))["unsubscribed_at"] is not None
    assert await mail.unsubscribed(db, "new.person@seed.test") and not await mail.unsubscribed(db, "r1@seed.test")


async def keys_and_webhooks(world: World, dispatcher: User, parcel: dict[str, Any]) -> None:
    """5,000 API keys and 20 webhooks with 150 attempts each (past the 100 each keeps: recording an
    attempt prunes its hook's, so more never pile up; 1,000 each made the integrations page, which
    shows every hook's last 100, take seconds on a loaded machine), then a key made, used and
    revoked, a hook made, told of an event, sent to and deleted, and a parcel's recipient changed."""
    db, now = world.app.db, utcnow()
    await db.api_keys.insert_many([{"_id": n, "name": f"Key {n}", "scopes": ["parcels:read"], "hash": f"{n:064x}",
                                    "created_at": now, "created_by": dispatcher.id, "last_used_at": None,
                                    "revoked_at": None} for n in range(1, 5001)], ordered=False)
    await db.counters.update_one({"_id": "api_keys"}, {"$set": {"value": 5000}})
    for n in range(1, 20):
        await webhooks.create(db, url=f"http://127.0.0.1:9/{n}", events=["parcel.delivered"], created_by=dispatcher.id,
                              now=now)
    attempts = [{"hook_id": 1 + n % 19, "event": "parcel.delivered", "parcel_id": n, "webhook_id": f"msg_{n}",
                 "status": 200, "error": None, "at": now - timedelta(seconds=n), "duration_ms": 3}
                for n in range(19 * 150)]
    for start in range(0, len(attempts), 1000):
        await db.webhook_deliveries.insert_many(attempts[start:start + 1000], ordered=False)
    doc, key = await keys.create(db, name="Shop", scopes=["parcels:read"], created_by=dispatcher.id, now=now)
    assert (await keys.authenticate(db, key))["_id"] == doc["_id"] == 5001
    assert await keys.record_use(db, doc, utcnow())
    assert len(await keys.list_keys(db)) == keys.MAX_LISTED
    assert (await keys.revoke(db, doc["_id"], utcnow()))["revoked_at"] is not None
    assert (await keys.get_key(db, 17))["name"] == "Key 17"
    url = await webhooks.check_url("http://127.0.0.1:9/hook", production=False)
    hook = await webhooks.create(db, url=url, events=["parcel.status_changed"], created_by=dispatcher.id, now=now)
    assert len(await webhooks.list_hooks(db)) == 20 and (await webhooks.get_hook(db, hook["_id"]))["url"] == url
    assert [h["_id"] for h in await webhooks.subscribed(db, "parcel.status_changed")] == [hook["_id"]]
    await world.app.webhooks.record(Event("parcel.status_changed", parcel["_id"], utcnow(), 3))
    queued = await outbox.get_entry(db, f"webhook:{hook['_id']}:parcel.status_changed:{parcel['_id']}:3")
    await webhooks.record_attempt(db, 1, queued["payload"], None, "refused", utcnow(), 2)
    assert len(await webhooks.attempts(db, 1)) == webhooks.KEPT_ATTEMPTS
    assert await webhooks.delete(db, hook["_id"])
    changed = await parcels.set_recipient(db, parcel["_id"], {"name": "Asha", "email": None, "phone": None})
    assert changed["recipient"]["name"] == "Asha"


def user(doc: dict[str, Any]) -> User:
    return User(id=doc["_id"], role=doc["role"], email=doc["email"], name=doc["name"])


def record_calls(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Wrap every public coroutine of the models so the test knows which ones ran."""
    called: set[str] = set()
    for module in MODULES:
        for name, function in inspect.getmembers(module, inspect.iscoroutinefunction):
            if name.startswith("_") or function.__module__ != module.__name__:
                continue

            async def recorded(*args: Any, _f=function, _n=f"{module.__name__}.{name}", **kwargs: Any) -> Any:
                called.add(_n)
                return await _f(*args, **kwargs)

            monkeypatch.setattr(module, name, recorded)
    return called


def public_coroutines() -> set[str]:
    return {f"{m.__name__}.{name}" for m in MODULES for name, f in inspect.getmembers(m, inspect.iscoroutinefunction)
            if not name.startswith("_") and f.__module__ == m.__name__}


@pytest.mark.gen_test(timeout=300)
# What is slow is found by the profiler and run again (`still_slow`), so a page's 503 on a machine
# loaded by other work would only hide it: the pages get a deadline a loaded machine cannot miss.
@settings(database_deadline=15.0)
async def test_no_model_function_page_or_list_scans_a_collection(world, monkeypatch):
    data = await seed(world)
    db = world.app.db
    people = data["people"]
    dispatcher = user(people[1])
    driver_doc = people[data["parcels"][-1]["driver_id"] or data["drivers"][0]]
    driver = user(driver_doc)
    moving = data["moving"][0]
    owner = user(people[moving["owner_id"]])
    mover = user(people[moving["driver_id"]])
    expected = public_coroutines()
    called = record_calls(monkeypatch)
    await db.db.command("profile", 1, slowms=SLOW_MS)

    # -- the models, straight ---------------------------------------------------------------
    made = await users.create_user(db, email="new@seed.test", password_hash="x", role="client")
    assert (await users.get_user(db, made.id)).email == "new@seed.test"
    assert (await users.find_by_email(db, "USER5@seed.test"))[0].id == 5
    assert len(await users.get_users(db, range(1, 101))) == 100
    assert len(await users.list_users(db, "dispatcher")) == 10
    assert (await users.set_password(db, made.id, "y")).session == 1
    assert (await users.set_role(db, made.id, "driver")).role == "driver"
    assert (await users.end_sessions(db, made.id)).session == 3
    assert not (await users.deactivate(db, made.id)).active
    assert (await users.activate(db, made.id)).active
    newest = await users.find_people(db, role="client", limit=500)  # the densest role
    assert len(newest.users) == 500 and newest.next_before is not None
    assert len((await users.find_people(db, role="dispatcher")).users) == 10  # the sparsest: every window
    assert len((await users.find_people(db, search="user12")).users) == 50  # every role
    await users.find_people(db, search="user", limit=100, before=5000)  # a key everyone has: a window at a time
    assert [u.id for u in (await users.find_people(db, role="driver", search="user 499")).users] == [499]
    parcel = await parcels.create_parcel(db, owner_id=owner.id, pickup=moving["pickup"],
                                         destination=moving["destination"])
    assert parcel["_id"] == PARCELS + 1
    await parcels.assign_driver(db, parcel["_id"], driver.id)
    await parcels.assign_driver(db, parcel["_id"], mover.id)
    for status in ("picked_up", "in_transit", "delivered"):
        await parcels.set_status(db, parcel["_id"], status)
    assert (await parcels.get_parcel(db, parcel["_id"]))["status"] == "delivered"
    assert len(await parcels.get_parcels(db, range(1, 101))) == 100
    for who in (dispatcher, owner, driver):
        await parcels.list_visible(db, who)
        await parcels.list_visible(db, who, statuses=parcels.ACTIVE, limit=500)
        await parcels.list_visible(db, who, statuses=["cancelled"], before=PARCELS // 2)
    deep = await parcels.find_page(db, {}, limit=500, before=PARCELS // 3)
    assert len(deep.parcels) == 500 and deep.next_before == deep.parcels[-1]["_id"]
    rows, cursor = await parcels.active_first(db, {}, limit=50)
    assert len(rows) == 50 and cursor is not None
    await parcels.active_first(db, {"owner_id": owner.id}, limit=50, finished=True)
    route = await parcels.active_for_driver(db, mover.id)
    order = [doc["_id"] for doc in reversed(route)]
    assert [doc["_id"] for doc in await parcels.set_route(db, mover.id, order)] == order
    await parcels.route_changed(db, mover.id)
    await parcels.mark_route(db, route, utcnow())
    await parcels.stored_stops_before(db, [await parcels.get_parcel(db, i) for i in range(PARCELS - 299, PARCELS + 1)])
    assert len(await parcels.routes(db, data["drivers"][:300])) == 300
    await parcels.with_stops_before(db, [await parcels.get_parcel(db, i) for i in range(PARCELS - 299, PARCELS + 1)])
    failing = await parcels.create_parcel(db, owner_id=owner.id, pickup=moving["pickup"],
                                          destination=moving["destination"])
    await parcels.assign_driver(db, failing["_id"], mover.id)
    for status in ("picked_up", "in_transit"):
        await parcels.set_status(db, failing["_id"], status)
    failed = await parcels.set_status(db, failing["_id"], "failed", parcels.failure("nobody_home", ""))
    assert failed["attempts"] == 1
    assert len(await parcels.all_active(db)) == sum(d["status"] in parcels.ACTIVE for d in data["parcels"])
    await shares.revoke(db, moving["_id"])
    moving = await parcels.get_parcel(db, moving["_id"])
    # An hour: the pages below are asked for after slower seeding, a minute or more on a loaded machine.
    link = tokens.issue_share(moving["_id"], shares.version(moving), int(time.time()) + 3600, TEST_SECRET)
    assert await shares.resolve(db, tokens.verify_share(link, TEST_SECRET), utcnow())
    short = tokens.new_share_token()
    links = [{"_id": f"{short}{n}", "parcel_id": moving["_id"], "version": 0, "created_at": utcnow(),
              "expires_at": utcnow() + timedelta(days=2) - timedelta(minutes=30 * n)} for n in range(20_000)]
    for start in range(0, len(links), 1000):  # a year of links: nearly all of them expired
        await db.share_links.insert_many(links[start:start + 1000], ordered=False)
    await shares.store(db, short, moving, utcnow() + timedelta(days=2), utcnow())
    assert (await shares.get_link(db, short))["parcel_id"] == moving["_id"]
    assert len(await shares.get_links(db, [short, f"{short}1", "missing"])) == 2
    assert 0 < await shares.prune(db, utcnow() - timedelta(days=410)) < 500  # an indexed range, not a scan
    page = await locations.history(db, moving, limit=100)
    assert len(page.locations) == 100 and page.next_since is not None
    await locations.history(db, moving, since=page.next_since)
    assert await locations.store(db, [locations.sample(moving["_id"], mover.id, {"lat": 28.5, "lng": 77.1,
                                                                                  "address": ""}, utcnow())]) == 1
    writer = world.app.hub.writer
    for n in range(50):
        writer.add(moving["_id"], mover.id, {"lat": 28.5, "lng": 77.1 + n / 1000, "address": ""}, utcnow())
    assert await writer.flush()
    assert await db.next_id("parcels") == PARCELS + 3
    await db.prune_locations()
    await proofs_of_delivery(db, moving, mover)
    # An import: 500 rows of 250 clients, a third of them assigned to 5 drivers, checked whole, then one insert.
    lines = ["client_email,pickup_lat,pickup_lng,pickup_address,destination_lat,destination_lng,destination_address,"
             "driver_email"] + [f"user{600 + n % 250}@seed.test,28.6,77.2,A,28.5,77.1,B,"
                                f"{f'user{11 + n % 5}@seed.test' if n % 3 == 0 else ''}" for n in range(500)]
    checked = await imports.check(db, "\n".join(lines).encode())
    assert not checked.bad and len(await imports.create(db, checked)) == 500
    await outbox_and_addresses(db)
    await keys_and_webhooks(world, dispatcher, moving)

    # -- every page and API list, over HTTP ---------------------------------------------------
    track = f"/parcels/{moving['_id']}/track"
    for who, path in [
        (owner, "/parcels"), (owner, "/parcels?before=15000"), (owner, track), (mover, "/driver"),
        (mover, f"/driver/parcels/{moving['_id']}"), (dispatcher, "/dispatch"),
        (dispatcher, "/dispatch?part=finished"), (dispatcher, "/dispatch?part=finished&before=10000"),
        (dispatcher, "/dispatch?status=delivered"), (dispatcher, "/dispatch?status=cancelled&before=9000"),
        (dispatcher, "/dispatch?status=all"), (dispatcher, "/dispatch?status=active"),
        (dispatcher, f"/dispatch?q={owner.email}"), (dispatcher, f"/dispatch?q={mover.email}&status=all"),
        (dispatcher, f"/dispatch?q={moving['_id']}"), (dispatcher, f"/dispatch?assigned={parcel['_id']}"),
        (dispatcher, "/dispatch/parcels/new"), (dispatcher, f"/dispatch/parcels/new?created={parcel['_id']}"),
        (dispatcher, "/dispatch/import"), (dispatcher, "/dispatch/import?created=2&first=7&last=8&assigned=1"),
        (dispatcher, "/dispatch/people"), (dispatcher, "/dispatch/people?role=driver&q=user4"),
        (dispatcher, "/dispatch/integrations"), (dispatcher, "/dispatch/integrations?revoked=17"),
        (dispatcher, f"/dispatch/people?q=user&before=5000&changed={made.id}"),
        (None, f"/t/{link}"), (None, f"/t/{short}"),
    ]:
        response = await world.page(path, who)
        assert response.code == 200, (path, response.code)
    for who, path in [
        (dispatcher, "/api/parcels/"), (dispatcher, "/api/parcels/?limit=500&before=12345"),
        (dispatcher, "/api/users/?role=client&limit=500"), (dispatcher, "/api/users/?q=user1&before=9000"),
        (dispatcher, "/api/users/?role=dispatcher"),
        (dispatcher, "/api/keys/"), (dispatcher, "/api/webhooks/"), (dispatcher, "/api/webhooks/2/deliveries/"),
        (dispatcher, "/api/parcels/?status=cancelled"), (dispatcher, "/api/parcels/?active=1"),
        (owner, "/api/parcels/"), (mover, "/api/parcels/?active=1"),
        (owner, f"/api/parcels/{moving['_id']}/"), (owner, f"/api/parcels/{moving['_id']}/locations/"),
        (owner, f"/api/parcels/{moving['_id']}/proof/photo"), (None, f"/t/{short}/proof"),
        (owner, f"/api/parcels/{moving['_id']}/locations/?limit=10"), (None, f"/t/{link}/locations?limit=10"),
        (None, f"/t/{short}/locations?limit=10"),
    ]:
        response = await world.api("GET", path, who)
        assert response.code == 200, (path, response.code)

    form = {"client_email": owner.email, "pickup_address": "A", "pickup_point": "28.6, 77.2",
            "destination_address": "B", "destination_point": "28.5, 77.1"}
    assert (await world.page("/dispatch/parcels/new", dispatcher, "POST", form)).code == 303
    response = await world.api("POST", "/api/parcels/import/", dispatcher, raw="\n".join(lines[:50]).encode(),
                               headers={"Content-Type": "text/csv"})
    assert response.code == 201, response.body

    await db.db.command("profile", 0)
    slow = await db.db["system.profile"].find({"millis": {"$gte": SLOW_MS}}).to_list(None)
    scans = [op for op in slow if await still_slow(db, op)]
    assert not scans, "operations that scan (no index serves them):\n" + "\n".join(
        f"  {op.get('millis')} ms {op.get('op')} {op.get('ns')} {op.get('command')}" for op in scans
    )
    assert called == expected, f"not run here: {sorted(expected - called)}"
