"""A business's volume of data (docs/protocol.md, "Lists that page"): paged lists with RFC 8288
`Link` headers, concurrent creation, a bounded sample queue, retention, and a shutdown that
writes every queued sample."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from tornado.websocket import WebSocketClosedError, websocket_connect

from devtools.process import Server, app_env, free_port, run_cli
from models import locations, parcels
from models.db import Database, utcnow
from models.locations import SampleWriter
from tests.conftest import World, body, location, refused, settings

LINK = re.compile(r'^<([^>]+)>; rel="next"$')


def next_link(response) -> str | None:
    """The path and query of the `Link: <...>; rel="next"` header, if there is one."""
    header = response.headers.get("Link")
    if header is None:
        return None
    url = urlsplit(LINK.match(header).group(1))
    return f"{url.path}?{url.query}"


async def all_pages(world: World, path: str, user, key: str | None = None) -> list[list]:
    """Follow `Link` from `path` to the last page; returns each page's items."""
    pages = []
    while path is not None:
        response = await world.api("GET", path, user)
        assert response.code == 200, response.body
        pages.append(body(response)[key] if key else body(response))
        path = next_link(response)
        assert len(pages) < 50
    return pages


# -- the parcels list ------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_the_parcels_list_pages_newest_first_and_links_the_next_page(world):
    asha, ravi, dispatcher = await world.user("client"), await world.user("client"), await world.user("dispatcher")
    made = [await world.parcel(asha if i % 3 else ravi) for i in range(8)]
    ids = [p["_id"] for p in made][::-1]

    pages = await all_pages(world, "/api/parcels/?limit=3", dispatcher)
    assert [[p["id"] for p in page] for page in pages] == [ids[0:3], ids[3:6], ids[6:8]]
    assert pages[0][0]["timeline"][0]["status"] == "pending"

    own = [p["_id"] for p in made if p["owner_id"] == asha.id][::-1]
    pages = await all_pages(world, "/api/parcels/?limit=2", asha)
    assert [p["id"] for page in pages for p in page] == own and all(len(page) <= 2 for page in pages)

    everything = await world.api("GET", "/api/parcels/", dispatcher)  # the default: 100, no more to follow
    assert [p["id"] for p in body(everything)] == ids and "Link" not in everything.headers
    after = await world.api("GET", f"/api/parcels/?before={ids[1]}&limit=2", dispatcher)
    assert [p["id"] for p in body(after)] == ids[2:4]


@pytest.mark.gen_test(timeout=30)
async def test_status_and_active_filter_the_list_across_pages(world):
    client, driver, dispatcher = await world.user("client"), await world.user("driver"), await world.user("dispatcher")
    statuses = ["pending", "delivered", "in_transit", "cancelled", "delivered", "assigned", "delivered"]
    made = [await world.parcel(client, driver if s != "pending" else None, status=s) for s in statuses]
    newest_first = made[::-1]

    def ids(wanted) -> list[int]:
        return [p["_id"] for p in newest_first if p["status"] in wanted]

    pages = await all_pages(world, "/api/parcels/?status=delivered&limit=2", dispatcher)
    assert [p["id"] for page in pages for p in page] == ids({"delivered"})
    pages = await all_pages(world, "/api/parcels/?active=1&limit=2", dispatcher)
    assert [p["id"] for page in pages for p in page] == ids(set(parcels.ACTIVE))
    both = await world.api("GET", "/api/parcels/?status=cancelled,pending", client)
    assert [p["id"] for p in body(both)] == ids({"cancelled", "pending"})
    mine = await world.api("GET", "/api/parcels/?active=1", driver)
    assert [p["id"] for p in body(mine)] == ids({"assigned", "in_transit"})


@pytest.mark.gen_test
async def test_bad_paging_arguments_are_refused_with_a_message(world):
    dispatcher = await world.user("dispatcher")
    for query in ("limit=0", "limit=501", "limit=x", "limit=-1", "before=0", "before=abc",
                  f"before={2**64}", "status=lost", "status=delivered,,", "active=2", "active=1&status=pending"):
        response = await world.api("GET", f"/api/parcels/?{query}", dispatcher)
        refused(response, 400, query)
        assert isinstance(body(response)["error"], str) and body(response)["error"], query


# -- the history ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_the_history_pages_oldest_first_with_since(world):
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    start = utcnow() - timedelta(hours=20)  # a fix kept offline (up to 24 h), hours before the parcel existed
    moments = [start + timedelta(minutes=7 * i) for i in range(24)]
    moments[10] = moments[9]  # two samples in one millisecond, where a page of 10 would end
    await world.app.db.locations.insert_many([
        {"parcel_id": parcel["_id"], "driver_id": driver.id, "lat": 28.0 + i / 100, "lng": 77.0, "address": "",
         "timestamp": moment} for i, moment in enumerate(moments)
    ])
    base = f"/api/parcels/{parcel['_id']}/locations/"
    pages = await all_pages(world, base + "?limit=10", client, key="locations")
    assert [len(page) for page in pages] == [9, 10, 5]  # the first page stops before the tie
    assert [p["lat"] for page in pages for p in page] == [28.0 + i / 100 for i in range(24)]
    whole = await world.api("GET", base, client)
    assert len(body(whole)["locations"]) == 24 and "Link" not in whole.headers
    later = await world.api("GET", base + "?since=" + body(whole)["locations"][20]["timestamp"], client)
    assert [p["lat"] for p in body(later)["locations"]] == [28.21, 28.22, 28.23]
    for query in ("limit=0", "limit=10001", "since=yesterday", "since=2026-13-01T00:00:00Z"):
        response = await world.api("GET", base + "?" + query, client)
        refused(response, 400, query)


# -- writing ------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_fifty_parcels_created_at_once_on_an_empty_database_all_get_distinct_ids(world):
    client = await world.user("client")
    responses = await asyncio.gather(*[
        world.api("POST", "/api/parcels/", client, body={
            "pickup": {"lat": 28.6, "lng": 77.2}, "destination": {"lat": 28.5, "lng": 77.1}})
        for _ in range(50)
    ])
    assert [r.code for r in responses] == [201] * 50
    assert sorted(body(r)["id"] for r in responses) == list(range(1, 51))


@pytest.mark.gen_test
@settings(sample_queue_max=3, sample_flush_interval=60)
async def test_the_sample_queue_is_bounded_and_counts_what_it_drops(world):
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    writer = world.app.hub.writer
    for i in range(5):  # nothing is written in between: the flush timer is a minute away
        writer.add(parcel["_id"], driver.id, {"lat": 28.0 + i / 10, "lng": 77.0, "address": ""}, utcnow())
    assert (writer.queued, writer.dropped) == (3, 2)
    assert await writer.flush()
    history = body(await world.api("GET", f"/api/parcels/{parcel['_id']}/locations/", client))["locations"]
    assert [p["lat"] for p in history] == [28.2, 28.3, 28.4]  # the oldest went
    assert (writer.queued, writer.written) == (0, 3)


@pytest.mark.gen_test(timeout=30)
async def test_samples_wait_for_an_unreachable_database_and_land_when_it_is_back(world):
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    nowhere = Database(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", world.app.config.mongodb_db,
                       server_timeout=0.3)
    writer = SampleWriter(nowhere, flush_interval=60, retry_interval=60)
    try:
        for i in range(3):
            writer.add(parcel["_id"], driver.id, {"lat": 28.0 + i / 10, "lng": 77.0, "address": ""}, utcnow())
        assert not await writer.flush()  # nothing lost: the samples wait
        assert writer.queued == 3 and writer.errors == 1
        writer.db = world.app.db  # the database is back
        assert await writer.flush()
    finally:
        await nowhere.close()
    history = body(await world.api("GET", f"/api/parcels/{parcel['_id']}/locations/", client))["locations"]
    assert [p["lat"] for p in history] == [28.0, 28.1, 28.2]
    assert body(await world.api("GET", f"/api/parcels/{parcel['_id']}/", client))["last_location"]["lat"] == 28.2


@pytest.mark.gen_test
async def test_last_location_never_goes_back_to_an_older_sample(world):
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    writer, now = world.app.hub.writer, utcnow()
    writer.add(parcel["_id"], driver.id, {"lat": 28.5, "lng": 77.0, "address": "new"}, now)
    await writer.flush()
    writer.add(parcel["_id"], driver.id, {"lat": 28.1, "lng": 77.0, "address": "old"}, now - timedelta(minutes=5))
    await writer.flush()
    stored = body(await world.api("GET", f"/api/parcels/{parcel['_id']}/", client))["last_location"]
    assert (stored["lat"], stored["address"]) == (28.5, "new")


@pytest.mark.gen_test
@settings(location_retention_days=3)
async def test_samples_older_than_the_retention_period_are_deleted(world):
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    now = utcnow()
    await world.app.db.locations.insert_many([
        {"parcel_id": parcel["_id"], "driver_id": driver.id, "lat": lat, "lng": 77.0, "address": "", "timestamp": t}
        for lat, t in ((28.1, now - timedelta(days=3, minutes=1)), (28.2, now - timedelta(days=2, hours=23)))
    ])
    await world.app.prune_locations()
    remaining = await world.app.db.locations.find({"parcel_id": parcel["_id"]}).to_list(None)
    assert [d["lat"] for d in remaining] == [28.2]
    index = (await world.app.db.locations.index_information())["retention"]
    assert index["key"] == [("timestamp", 1)]
    assert "expireAfterSeconds" not in index  # the embedded server: no TTL index, whose sweeper scans


@pytest.mark.gen_test
async def test_with_mongodb_the_retention_index_is_a_ttl_index(world, db_server):
    db = Database(db_server, world.app.config.mongodb_db, retention_days=7, ttl_index=True)
    try:
        await db.ensure_indexes()  # the same database as the app's, which made it a plain index
        assert (await db.locations.index_information())["retention"]["expireAfterSeconds"] == 7 * 86400
    finally:
        await db.close()


# -- shutdown ------------------------------------------------------------------------------------


def test_sigterm_under_load_writes_every_sample_and_exits_in_time(tmp_path):
    """Ten drivers send as fast as the limit allows, every update sampled; SIGTERM lands
    mid-drive. The server exits within 10 s, and after a restart the history holds every
    update the server accepted."""
    env = app_env(DATA_DIR=str(tmp_path), LOCATION_SAMPLE_EVERY="1")
    made = run_cli("create-user", "--email", "boss@example.test", "--password", "password1", "--role", "dispatcher",
                   env=env)
    assert made.returncode == 0, made.stderr
    server = Server(env, "--no-demo").start()
    boss = server.token("boss@example.test", "password1")
    assert server.api("POST", "/api/users/", boss, {"email": "c@example.test", "password": "password1",
                                                    "role": "client"})[0] == 201
    routes = []
    for i in range(10):
        _, driver = server.api("POST", "/api/users/", boss, {"email": f"d{i}@example.test", "password": "password1",
                                                             "role": "driver"})
        _, owner = server.api("GET", "/api/me/", server.token("c@example.test", "password1"))
        _, parcel = server.api("POST", "/api/parcels/", boss, {
            "owner_id": owner["id"], "pickup": {"lat": 28.6, "lng": 77.2}, "destination": {"lat": 28.5, "lng": 77.1}})
        server.api("POST", f"/api/parcels/{parcel['id']}/assign/", boss, {"driver_id": driver["id"]})
        routes.append((parcel["id"], server.token(f"d{i}@example.test", "password1")))

    accepted: dict[int, int] = {}

    async def drive(parcel_id: int, token: str) -> None:
        ws = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws/tracking/?parcel_id={parcel_id}&token={token}")
        assert json.loads(await ws.read_message())["type"] == "subscribed"
        n = 0
        while True:
            n += 1
            try:
                ws.write_message(location(28.0 + n / 1000, 77.0))
            except WebSocketClosedError:
                return
            answer = await ws.read_message()
            if answer is None:  # closed by the server's shutdown
                return
            if json.loads(answer)["type"] == "location_update":
                accepted[parcel_id] = accepted.get(parcel_id, 0) + 1
            await asyncio.sleep(0.11)  # within 10 a second

    async def load_then_sigterm() -> float:
        drivers = [asyncio.ensure_future(drive(*route)) for route in routes]
        await asyncio.sleep(2.0)
        server.process.terminate()
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*drivers), 10)
        await asyncio.to_thread(server.process.wait, 10)
        return time.monotonic() - started

    try:
        took = asyncio.run(load_then_sigterm())
    finally:
        output = server.stop()
    assert took < 10, output
    assert "Traceback" not in output, output
    assert sum(accepted.values()) >= 100

    restarted = Server(env, "--no-demo").start()
    try:
        token = restarted.token("boss@example.test", "password1")
        for parcel_id, _ in routes:
            _, history = restarted.api("GET", f"/api/parcels/{parcel_id}/locations/", token)
            assert len(history["locations"]) == accepted.get(parcel_id, 0), parcel_id
    finally:
        restarted.stop()


@pytest.mark.gen_test(timeout=30)
async def test_a_long_history_with_gaps_pages_completely_in_order(world):
    """Samples written through the model: the parcel knows when its history begins and how
    dense it is, which sizes the windows the history is read in."""
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    now = utcnow()
    bursts = [now - timedelta(days=2), now - timedelta(hours=10), now - timedelta(minutes=30)]
    samples = [locations.sample(parcel["_id"], driver.id, {"lat": 28.0 + n / 1000, "lng": 77.0, "address": ""},
                                start + timedelta(seconds=5 * i))
               for n, (start, i) in enumerate((start, i) for start in bursts for i in range(100))]
    assert await locations.store(world.app.db, samples) == 300
    pages = await all_pages(world, f"/api/parcels/{parcel['_id']}/locations/?limit=70", client, key="locations")
    assert [len(page) for page in pages] == [70, 70, 70, 70, 20]
    assert [p["lat"] for page in pages for p in page] == [28.0 + n / 1000 for n in range(300)]


@pytest.mark.gen_test(timeout=30)
@settings(last_location_interval=60)
async def test_a_parcels_last_location_is_rewritten_at_most_every_interval(world):
    """The history gets every sample within the flush interval; the parcel's own document,
    whose rewrite costs every index of the parcels collection, at most every
    `last_location_interval` seconds, with the latest sample of that time."""
    client, driver = await world.user("client"), await world.user("driver")
    parcel = await world.parcel(client, driver, status="in_transit")
    writer, url = world.app.hub.writer, f"/api/parcels/{parcel['_id']}/"

    async def stored() -> tuple[int, float | None]:
        history = body(await world.api("GET", url + "locations/", client))["locations"]
        last = body(await world.api("GET", url, client))["last_location"]
        return len(history), last and last["lat"]

    async def until(wanted) -> tuple[int, float | None]:
        for _ in range(200):  # 10 s at most
            now = await stored()
            if wanted(now):
                return now
            await asyncio.sleep(0.05)
        raise AssertionError(f"still {now}")

    writer.add(parcel["_id"], driver.id, {"lat": 28.1, "lng": 77.0, "address": ""}, utcnow())
    assert await until(lambda now: now[0] == 1) == (1, 28.1)  # the first one goes to the parcel at once
    writer.add(parcel["_id"], driver.id, {"lat": 28.2, "lng": 77.0, "address": ""}, utcnow())
    writer.add(parcel["_id"], driver.id, {"lat": 28.3, "lng": 77.0, "address": ""}, utcnow())
    assert await until(lambda now: now[0] == 3) == (3, 28.1)  # in the history, not yet on the parcel
    assert writer.parcels_pending == 1
    writer.parcel_interval = 0.2  # once the interval has passed, the timer writes the latest
    writer.add(parcel["_id"], driver.id, {"lat": 28.4, "lng": 77.0, "address": ""}, utcnow())
    assert await until(lambda now: now == (4, 28.4)) == (4, 28.4)
    assert writer.parcels_pending == 0
