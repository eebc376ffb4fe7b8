"""A year of a delivery business in the embedded database: is every operation still fast? (`make bench-volume`)

Two questions (docs/protocol.md, "Lists that page" and "Query shapes"):

1. With 100,000 parcels, 5,505 users and 1,000,000 sampled locations, does every page, API
   call and socket handshake answer within 50 ms? Each row is one operation over real HTTP
   or WebSocket against `app.py serve`, from the first byte sent to the last received (the
   socket: until `subscribed`), run 5 times (fewer past ROW_BUDGET_S): the median against
   the budget, p90 for how steady it is, and the server's answer (not 2xx: no pass).
2. Do 1,000 location updates a second keep up? 200 active parcels × (driver + owner + a
   dispatcher) at 5 Hz from the reference load generator, every LOCATION_SAMPLE_EVERY-th
   update written: the rate, the viewers' p50/p99, the database's and the app's CPU (one
   core = 1.0), and the drain, from the load stopping until every expected sample is stored.

The data (a year: the newest 1,500 parcels under way, ~98 % of the rest delivered, five
with long histories, the samples within the retention) is made once with the product's
models: users by `create_user`, parcels by `new_parcel` given their past (a year of history
has timestamps that creating them now cannot), samples through the writer, `store`. It is
kept in `benchmarks/.volume-data/` (`--quick`: a tenth, in `quick/`) and reused while the
marker's sizes match (`--reload` redoes it). Results: `<data dir>/results.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookies
import io
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace as Sizes
from typing import Any
from urllib.parse import urlencode

from PIL import Image, ImageDraw, ImageFilter
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import database_uri, open_database  # noqa: E402
from auth import passwords, tokens  # noqa: E402
from benchmarks import generator  # noqa: E402
from benchmarks.fixture import App  # noqa: E402
from devtools.process import app_env  # noqa: E402
from models import locations, parcels, users  # noqa: E402
from models.access import User  # noqa: E402
from models.db import Database, find_by_ids, iso, utcnow  # noqa: E402
from settings import Settings  # noqa: E402

DATA_DIR = ROOT / "benchmarks" / ".volume-data"
MARKER_ID = "volume-loaded"
GENERATOR_VERSION = 4  # bump when the generated data changes shape: the next run reloads
SECRET = "volume-bench-" + "k" * 40
PASSWORD = "volume-pass"
BUDGET_MS = 50.0
IMPORT_ROWS = 5_000
IMPORT_BUDGET_MS = 10_000.0  # the import is timed whole (CONTRACT §10: 5,000 rows in under 10 s)
ROW_BUDGET_S = 30.0  # a row stops repeating once its runs have taken this long (at least one run)
REQUEST_TIMEOUT_S = 120.0
SERVER_START_TIMEOUT_S = 900.0  # the first start builds its indexes over a million documents
LOAD_PARCELS = 200
LOAD_RATE_HZ = 5
DEVICE_INTERVAL_S = 5  # a phone's fix every 5 s; the server keeps one in LOCATION_SAMPLE_EVERY
DRAIN_TIMEOUT_S = 30.0
BATCH = 1000
CENTRE_BOX = ((28.4, 28.8), (77.0, 77.4))  # New Delhi
UNDER_WAY = ("assigned", "picked_up", "in_transit")
STREETS = ("Janpath", "Rajpath", "Lodhi Road", "Ring Road", "Mathura Road", "Aurobindo Marg",
           "Connaught Place", "Karol Bagh", "Lajpat Nagar", "Saket", "Dwarka Sector 6", "Rohini Sector 9")


# -- the volume ------------------------------------------------------------------


# How much data to generate; the marker records it, so a change reloads. The newest `active`
# parcels are still under way; the first few of those have the `long_histories`.
FULL = Sizes(clients=5000, drivers=500, dispatchers=5, parcels=100_000, locations=1_000_000, active=1500,
             long_histories=[10_000, 7_000, 5_000, 3_000, 2_000])
QUICK = Sizes(**{**vars(FULL), "parcels": 10_000, "locations": 100_000})


def users_of(sizes: Sizes) -> int:
    return sizes.clients + sizes.drivers + sizes.dispatchers


def point(rng: random.Random) -> dict[str, Any]:
    (lat0, lat1), (lng0, lng1) = CENTRE_BOX
    return {"lat": round(rng.uniform(lat0, lat1), 6), "lng": round(rng.uniform(lng0, lng1), 6),
            "address": f"{rng.randint(1, 250)} {rng.choice(STREETS)}, New Delhi"}


def plan(sizes: Sizes, now: datetime, settings: Settings, rng: random.Random) -> list[tuple[dict, dict]]:
    """Every parcel's document, oldest first, with its track: the path and the times its samples follow."""
    n, year = sizes.parcels, timedelta(days=365)
    first_active = n - sizes.active + 1
    long = {first_active + k: count for k, count in enumerate(sizes.long_histories)}
    drivers = range(sizes.clients + 1, sizes.clients + sizes.drivers + 1)
    recent = now - timedelta(days=settings.location_retention_days - 1)  # a day inside: nothing expires at once
    spacing = timedelta(seconds=DEVICE_INTERVAL_S * settings.location_sample_every)
    minutes = lambda a, b: timedelta(minutes=rng.uniform(a, b))  # noqa: E731
    plans = []
    for pid in range(1, n + 1):
        created = now - year + year * (pid - 1) / n
        pickup, destination = point(rng), point(rng)
        steps, status = [("pending", created)], "pending"
        track: dict[str, Any] = {"from": (pickup["lat"], pickup["lng"]), "frac": 1.0, "weight": 0.0, "samples": 0,
                                 "to": (destination["lat"], destination["lng"]), "spacing": spacing, "exact": False}
        if pid in long:
            status, end = "in_transit", now - timedelta(seconds=30)
            start = end - spacing * (long[pid] - 1)
            assigned = max(created + timedelta(seconds=60), start - timedelta(minutes=2))
            steps += [(s, assigned + timedelta(seconds=40 * k)) for k, s in enumerate(UNDER_WAY)]
            track.update(start=start, end=end, samples=long[pid], exact=True, frac=0.6)
        elif pid > n - sizes.active // 10:
            pass  # the newest: not yet assigned
        elif pid >= first_active:
            status = rng.choices(UNDER_WAY, weights=(35, 20, 45))[0]
            flow = UNDER_WAY[: UNDER_WAY.index(status) + 1]
            times = sorted(created + (now - timedelta(seconds=60) - created) * rng.uniform(0.05, 0.95) for _ in flow)
            steps += [(s, t) for s, t in zip(flow, times, strict=True)]
            track.update(start=times[0], end=now - timedelta(seconds=rng.uniform(5, 120)))
            if status == "assigned":  # driving to the pickup
                track.update({"from": (pickup["lat"] + 0.02, pickup["lng"] + 0.02), "to": track["from"],
                              "frac": rng.uniform(0.3, 0.9), "weight": 0.5})
            else:
                track.update(frac=rng.uniform(0.0, 0.2) if status == "picked_up" else rng.uniform(0.2, 0.9),
                             weight=0.8 if status == "picked_up" else 1.0)
        elif rng.random() < 0.98:
            status, at = "delivered", created
            for s, (a, b) in zip((*UNDER_WAY, "delivered"), ((5, 90), (15, 120), (1, 10), (20, 180)), strict=True):
                at += minutes(a, b)
                steps.append((s, at))
            track.update(start=steps[1][1], end=steps[-1][1], weight=1.0 if created >= recent else 0.0)
        else:
            status, cancelled = "cancelled", created + minutes(10, 240)
            if rng.random() < 0.5:  # cancelled after assignment, before pickup
                steps.append(("assigned", created + minutes(5, 9)))
            steps.append(("cancelled", cancelled))
        assigned = dict(steps).get("assigned")  # its driver's stop: last on the route at the time
        doc = parcels.new_parcel(pid, created, owner_id=rng.randint(1, sizes.clients), pickup=pickup,
                                 destination=destination, driver_id=rng.choice(drivers) if assigned else None,
                                 route_seq=parcels.route_key(assigned) if assigned else None)
        doc.update(status=status, timeline=[{"status": s, "timestamp": t} for s, t in steps])
        plans.append((doc, track))
    share_samples([t for _, t in plans], sizes.locations - sum(sizes.long_histories), rng)
    return plans


def share_samples(tracks: list[dict], total: int, rng: random.Random) -> None:
    """Share `total` samples among the tracks with a weight, about in proportion to it."""
    eligible = [t for t in tracks if t["weight"] > 0]
    if total < 0:
        raise ValueError("the long histories alone exceed the number of locations")
    if not eligible:
        return
    raw = [t["weight"] * rng.uniform(0.5, 1.5) for t in eligible]
    scale = total / sum(raw)
    for t, r in zip(eligible, raw, strict=True):
        t["samples"] = math.floor(r * scale)
    for t in rng.sample(eligible, total - sum(t["samples"] for t in eligible)):
        t["samples"] += 1


def fixes(track: dict, rng: random.Random) -> Iterator[tuple[dict[str, Any], datetime]]:
    """A track's samples, oldest first: positions along its path (the last exactly on it), and when."""
    n, (lat0, lng0), (lat1, lng1) = track["samples"], track["from"], track["to"]
    spacing = track["spacing"]
    if not track["exact"] and n > 1:
        spacing = min(spacing, (track["end"] - track["start"]) / (n - 1))
    for k in range(n):
        frac, jitter = track["frac"] * (k + 1) / n, 0.0 if k == n - 1 else 0.0003
        yield ({"lat": round(lat0 + (lat1 - lat0) * frac + rng.uniform(-jitter, jitter), 6),
                "lng": round(lng0 + (lng1 - lng0) * frac + rng.uniform(-jitter, jitter), 6), "address": ""},
               track["end"] - spacing * (n - 1 - k))


async def ensure_loaded(db: Database, sizes: Sizes, settings: Settings, reload: bool) -> dict[str, Any]:
    """The marker of a loaded volume: the one there, or a new one after loading everything."""
    marker = await db.counters.find_one({"_id": MARKER_ID})
    if not reload and marker and marker.get("sizes") == vars(sizes) and marker.get("generator") == GENERATOR_VERSION:
        age = datetime.now(UTC) - marker["loaded_at"]
        print(f"data: already loaded {marker['loaded_at']:%Y-%m-%d %H:%M} UTC ({age.days} days ago, took "
              f"{marker['seconds']:.0f} s); skipping the load (--reload to redo it)")
        if age > timedelta(days=7):
            print("  note: the data is over a week old: its active parcels are that much older and retention is "
                  "removing samples; --reload for fresh figures")
        return marker
    print(f"data: loading {users_of(sizes):,} users, {sizes.parcels:,} parcels, {sizes.locations:,} locations "
          f"(batches of {BATCH:,}, unordered)")
    now, rng = utcnow(), random.Random(20260101)
    password_hash = await passwords.hash_password(PASSWORD, 4)
    plans = plan(sizes, now, settings, rng)
    await db.client.drop_database(db.db.name)
    started = time.monotonic()
    docs = [doc for doc, _ in plans]
    for doc, track in plans:
        if doc["status"] == "delivered" and not track["samples"]:  # delivered before the retention's days
            doc["last_location"] = {**doc["destination"], "timestamp": doc["timeline"][-1]["timestamp"],
                                    "driver_id": doc["driver_id"]}
    for i in range(0, len(docs), BATCH):
        await db.parcels.insert_many(docs[i:i + BATCH], ordered=False)
    batch: list[dict[str, Any]] = []
    for doc, track in plans:  # through the product's writer: the history, and each parcel's last_location
        for location, at in fixes(track, rng):
            batch.append(locations.sample(doc["_id"], doc["driver_id"], location, at))
            if len(batch) == BATCH:
                await locations.store(db, batch)
                batch = []
    if batch:
        await locations.store(db, batch)
    # The indexes built once over all of it (as a first start does), then the users, whom
    # `create_user` looks up by e-mail; a role's ids are contiguous: clients, drivers, dispatchers.
    print(f"data: parcels and samples in after {time.monotonic() - started:.0f} s; the indexes, then the users")
    await db.ensure_indexes()
    for role, count in (("client", sizes.clients), ("driver", sizes.drivers), ("dispatcher", sizes.dispatchers)):
        for first in range(1, count + 1, 100):
            await asyncio.gather(*(users.create_user(db, email=f"{role}{n}@volume.test", role=role,
                                                     password_hash=password_hash, name=f"{role.title()} {n}")
                                   for n in range(first, min(count + 1, first + 100))))
    # Each driver's route as the product keeps it: every stop's place and the next stop noted.
    for driver_id in sorted({d["driver_id"] for d in docs if d.get("driver_id") and d["status"] in parcels.ACTIVE}):
        await parcels.route_changed(db, driver_id)
    seconds = time.monotonic() - started
    marker = {"_id": MARKER_ID, "sizes": vars(sizes), "generator": GENERATOR_VERSION, "loaded_at": now,
              "seconds": seconds, "long_parcels": [d["_id"] for d, t in plans if t["exact"]]}
    await db.counters.update_one({"_id": "parcels"}, {"$set": {"value": sizes.parcels}})  # the ids given here
    await db.counters.insert_one(marker)
    total = users_of(sizes) + sizes.parcels + sizes.locations
    print(f"data: loaded {total:,} documents in {seconds:.0f} s ({total / seconds:,.0f} docs/s)")
    return marker


# -- what to measure on ----------------------------------------------------------


@dataclass
class Subjects:
    """The users and parcels each measurement uses, read from the database as it is now."""

    longest: int  # the active parcel with the longest history
    client: User  # its owner
    driver: User  # its driver
    dispatchers: list[User]
    old_parcel: int  # a delivered parcel from mid-year
    since: str  # the timestamp that ends the first page of the longest history
    assign_parcel: int
    assign_drivers: tuple[int, int]
    status_parcels: list[int]
    load_parcels: list[dict[str, Any]]  # {_id, driver_id, owner_id}


async def pick_subjects(db: Database, sizes: Sizes, marker: dict[str, Any], runs: int) -> Subjects:
    active = await find_by_ids(db.parcels, range(sizes.parcels - sizes.active + 1, await db.last_id("parcels") + 1),
                               {"status": 1, "driver_id": 1, "owner_id": 1})
    docs = [active[i] for i in sorted(active)]
    longest = await parcels.get_parcel(db, marker["long_parcels"][0])
    reserved = set(marker["long_parcels"])
    under_way = [d for d in docs if d["_id"] not in reserved and d["status"] in UNDER_WAY and d.get("driver_id")]
    load: list[dict[str, Any]] = []
    for preferred in (("picked_up", "in_transit"), UNDER_WAY):  # newest first, each driver once
        for d in reversed(under_way):
            if len(load) < LOAD_PARCELS and d["status"] in preferred and d["driver_id"] not in {
                    p["driver_id"] for p in load}:
                load.append(d)
    reserved |= {d["_id"] for d in load}
    rest = [d for d in under_way if d["_id"] not in reserved]
    assign = next((d for d in rest if d["status"] == "in_transit"), rest[0])
    first_driver, first_dispatcher = sizes.clients + 1, sizes.clients + sizes.drivers + 1
    drivers = [i for i in range(first_driver, first_driver + 3) if i != assign["driver_id"]]
    people = await users.get_users(db, [longest["owner_id"], longest["driver_id"],
                                        *range(first_dispatcher, first_dispatcher + sizes.dispatchers)])
    return Subjects(
        longest=longest["_id"], client=people[longest["owner_id"]], driver=people[longest["driver_id"]],
        dispatchers=[people[i] for i in range(first_dispatcher, first_dispatcher + sizes.dispatchers)],
        old_parcel=sizes.parcels // 2 + 7, since=iso((await locations.history(db, longest)).next_since),
        assign_parcel=assign["_id"], assign_drivers=(drivers[0], drivers[1]), load_parcels=load,
        status_parcels=[d["_id"] for d in rest if d["status"] == "assigned" and d["_id"] != assign["_id"]][:runs])


# -- measuring ---------------------------------------------------------------------


def row_of(what: str, where: str, statuses: list[str], times: list[float], answer: str = "",
           budget_ms: float = BUDGET_MS) -> dict[str, Any]:
    """One operation's outcomes as the table and results.json show them: its status (how often
    each, if they differ), median and p90 (interpolated between the runs), and its verdict."""
    counts = Counter(statuses)
    median = statistics.median(times) if times else None
    p90 = statistics.quantiles(times, n=10, method="inclusive")[8] if len(times) > 1 else median
    ok = statuses and all(s.startswith("2") or s == "subscribed" for s in statuses)
    verdict = "yes" if ok and (median or 0) <= budget_ms else "no" if ok else "no (failed)"
    return {"what": what, "where": where, "statuses": statuses, "runs": len(times),
            "status": ", ".join(f"{s} ×{n}" for s, n in counts.items()) if len(counts) > 1 else
            next(iter(counts), "not run"), "times_ms": [round(t, 2) for t in times],
            "median_ms": None if median is None else round(median, 1), "p90_ms": None if p90 is None else round(p90, 1),
            "within_budget": verdict == "yes", "verdict": verdict, "answer": answer}


Outcome = tuple[str, float, str]  # status, milliseconds, what came back


class Http:
    """Real HTTP to the server, timed from the first byte sent to the last received."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = AsyncHTTPClient(force_instance=True, max_body_size=1 << 30, max_buffer_size=1 << 30)
        self.cookies: dict[str, str] = {}

    async def fetch(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> HTTPResponse:
        request = HTTPRequest(self.base + path, method=method, headers=headers, follow_redirects=False,
                              body=body if body is not None or method == "GET" else b"", connect_timeout=10,
                              request_timeout=REQUEST_TIMEOUT_S, decompress_response=False)
        return await self.client.fetch(request, raise_error=False)

    async def timed(self, method: str, path: str, *, token: str | None = None, cookie: str | None = None,
                    json_body: Any = None, raw: tuple[str, bytes] | None = None) -> Outcome:
        """A timed call; `raw`: a body of another type, as (Content-Type, bytes)."""
        headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **({"Cookie": cookie} if cookie else {}),
                   **({"Content-Type": "application/json"} if json_body is not None else {}),
                   **({"Content-Type": raw[0]} if raw else {})}
        body = raw[1] if raw else None if json_body is None else json.dumps(json_body).encode()
        started = time.perf_counter()
        response = await self.fetch(method, path, headers, body)
        elapsed = (time.perf_counter() - started) * 1000
        if response.code == 599:
            return f"error: {type(response.error).__name__}", elapsed, ""
        return str(response.code), elapsed, describe(response)

    async def cookie(self, email: str) -> str:
        """A page login as a browser does it: the form's XSRF cookie, the form, every cookie set."""
        if email not in self.cookies:
            jar: dict[str, str] = {}
            for method, form in (("GET", None), ("POST", {"email": email, "password": PASSWORD})):
                headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
                if form is not None:
                    form["_xsrf"] = jar.get("_xsrf", "")
                    headers["Content-Type"] = "application/x-www-form-urlencoded"
                response = await self.fetch(method, "/login", headers, form and urlencode(form).encode())
                for header in response.headers.get_list("Set-Cookie"):
                    jar.update((name, morsel.value) for name, morsel in http.cookies.SimpleCookie(header).items())
            if response.code != 302 or len(jar) < 2:
                raise RuntimeError(f"page login for {email} answered {response.code} without a login cookie")
            self.cookies[email] = "; ".join(f"{k}={v}" for k, v in jar.items())
        return self.cookies[email]


def describe(response: HTTPResponse) -> str:
    """What came back, briefly: size, items in a JSON list, and whether a next page is linked."""
    size = len(response.body or b"")
    parts = [f"{size / 1024:,.1f} KiB" if size >= 1024 else f"{size} B"]
    try:
        data = json.loads(response.body) if "json" in response.headers.get("Content-Type", "") else None
    except ValueError:
        data = None
    if isinstance(data, list):
        parts.append(f"{len(data):,} parcels")
    elif isinstance(data, dict) and isinstance(data.get("locations"), list):
        parts.append(f"{len(data['locations']):,} locations")
    elif isinstance(data, dict) and "error" in data:
        parts.append(f"error: {str(data['error'])[:60]}")
    if 'rel="next"' in response.headers.get("Link", ""):
        parts.append("Link next")
    return ", ".join(parts)


async def measure(what: str, where: str, runs: int, op: Callable[[int], Awaitable[Outcome]], app: App,
                  budget_ms: float = BUDGET_MS) -> dict:
    """Run `op` up to `runs` times (fewer once ROW_BUDGET_S is spent), keeping each outcome."""
    statuses, times, answer = [], [], ""
    for i in range(runs):
        if app.server.process is not None and app.server.process.poll() is not None:
            statuses.append("server exited")
            break
        try:
            status, ms, said = await op(i)
        except Exception as e:  # whatever the server does, the row records it and the benchmark goes on
            status, ms, said = f"error: {type(e).__name__}: {str(e)[:80]}", math.nan, ""
        statuses.append(status)
        times += [] if math.isnan(ms) else [ms]
        answer = said or answer
        if sum(times) / 1000 > ROW_BUDGET_S:
            break
    row = row_of(what, where, statuses, times, answer, budget_ms)
    median = f"{row['median_ms']:,.1f} ms" if times else "-"
    print(f"  {what:<44} {row['status']:<14} median {median}", flush=True)
    return row


async def socket_handshake(port: int, parcel_id: int, token: str) -> Outcome:
    started = time.perf_counter()
    ws = await asyncio.wait_for(websocket_connect(f"ws://127.0.0.1:{port}/ws/tracking/?parcel_id={parcel_id}"
                                                  f"&token={token}"), REQUEST_TIMEOUT_S)
    try:
        while True:
            message = await asyncio.wait_for(ws.read_message(), REQUEST_TIMEOUT_S)
            if message is None:
                return f"closed {ws.close_code}", (time.perf_counter() - started) * 1000, ""
            if (data := json.loads(message)).get("type") == "subscribed":
                return "subscribed", (time.perf_counter() - started) * 1000, f"role {data.get('role')}"
    finally:
        ws.close()


def import_file(client: User, rows: int) -> bytes:
    """A day's parcels for one client as a CSV file (docs/protocol.md, "Creating parcels")."""
    rng = random.Random()
    lines = ["client_email,pickup_lat,pickup_lng,pickup_address,destination_lat,destination_lng,"
             "destination_address,recipient_name"]
    for n in range(rows):
        (a, b), (c, d) = [(p["lat"], p["lng"]) for p in new_points(rng).values()]
        lines.append(f"{client.email},{a},{b},Warehouse,{c},{d},House {n + 1},Recipient {n + 1}")
    return ("\n".join(lines) + "\n").encode()


def proof_form(photo: bytes, signature: bytes) -> tuple[str, bytes]:
    """A proof of delivery as the driver's page sends it: multipart/form-data."""
    boundary = "bench" + os.urandom(8).hex()
    parts = [('name="received_by"', "text/plain", b"Asha Verma"), ('name="photo"; filename="photo.jpg"', "image/jpeg",
             photo), ('name="signature"; filename="signature.png"', "image/png", signature)]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\nContent-Type: {kind}\r\n\r\n"
                    .encode() + data + b"\r\n" for disposition, kind, data in parts)
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def proof_images() -> tuple[bytes, bytes]:
    """A photo as the page sends it (shrunk on the phone to 1600 px) and a signature."""
    # A photo's grain on a gradient: about 320 KiB at JPEG quality 85, as a phone's 1600 px photo is
    # (pure noise, JPEG's worst case, is 1.1 MiB and takes twice as long to re-encode).
    grain = Image.effect_noise((1600, 1200), 40).convert("RGB").filter(ImageFilter.GaussianBlur(0.8))
    photo = Image.blend(Image.linear_gradient("L").resize((1600, 1200)).convert("RGB"), grain, 0.4)
    signature = Image.new("RGBA", (600, 200), (0, 0, 0, 0))
    ImageDraw.Draw(signature).line([(20 + 20 * i, 60 + 80 * (i % 2)) for i in range(28)], fill=(0, 0, 0, 255), width=4)
    out = [io.BytesIO(), io.BytesIO()]
    photo.save(out[0], "JPEG", quality=85)
    signature.save(out[1], "PNG")
    return out[0].getvalue(), out[1].getvalue()


def new_points(rng: random.Random | None = None) -> dict[str, Any]:
    rng = rng or random.Random()
    return {"pickup": point(rng), "destination": point(rng)}


async def measure_all(app: App, db: Database, s: Subjects, token: Callable[[User], str], runs: int) -> list[dict]:
    http, rows = Http(app.server.url), []
    dispatcher, client, driver, longest = s.dispatchers[0], s.client, s.driver, s.longest
    as_dispatcher = token(dispatcher)

    async def get(what: str, path: str, user: User, role: str, page: bool) -> None:
        """A GET as a browser (login cookie) or as a script (Bearer token)."""
        try:
            credentials = {"cookie": await http.cookie(user.email)} if page else {"token": token(user)}
        except Exception as e:
            rows.append(row_of(what, f"GET {path} ({role})", [f"login failed: {str(e)[:80]}"], []))
            print(f"  {what:<44} {rows[-1]['status']}", flush=True)
            return
        rows.append(await measure(what, f"GET {path} ({role})", runs,
                                  lambda _: http.timed("GET", path, **credentials), app))

    async def repeat(what: str, where: str, op: Callable[[int], Awaitable[Outcome]], times: int = runs) -> None:
        rows.append(await measure(what, where, times, op, app))

    try:
        print("pages (login cookie):")
        for what, path, user, role in (
                ("dispatch board, first page", "/dispatch", dispatcher, "dispatcher"),
                ("dispatch board, delivered", "/dispatch?status=delivered", dispatcher, "dispatcher"),
                ("dispatch search by client email", f"/dispatch?q={client.email}", dispatcher, "dispatcher"),
                ("dispatch search by parcel id", f"/dispatch?q={s.old_parcel}", dispatcher, "dispatcher"),
                ("client's parcels", "/parcels", client, "client"), ("driver's parcels", "/driver", driver, "driver"),
                ("track page (10,000-sample history)", f"/parcels/{longest}/track", client, "owner")):
            await get(what, path, user, role, page=True)
        print("API reads (Bearer token):")
        for what, path, user, role in (
                ("parcels, first page", "/api/parcels/", dispatcher, "dispatcher"),
                ("parcels, limit=500", "/api/parcels/?limit=500", dispatcher, "dispatcher"),
                ("parcels, before=50000", "/api/parcels/?before=50000", dispatcher, "dispatcher"),
                ("parcels, status=cancelled", "/api/parcels/?status=cancelled", dispatcher, "dispatcher"),
                ("parcels, active=1", "/api/parcels/?active=1", dispatcher, "dispatcher"),
                ("parcels of a client", "/api/parcels/", client, "client"),
                ("parcels of a driver", "/api/parcels/", driver, "driver"),
                ("one parcel", f"/api/parcels/{s.old_parcel}/", dispatcher, "dispatcher"),
                ("locations, 512 (the issue's row)", f"/api/parcels/{longest}/locations/?limit=512", client, "owner"),
                ("locations, first page (10,000 kept)", f"/api/parcels/{longest}/locations/", client, "owner"),
                ("locations, since= page", f"/api/parcels/{longest}/locations/?{urlencode({'since': s.since})}",
                 client, "owner")):
            await get(what, path, user, role, page=False)

        print("writes, logins and the socket:")
        await repeat("assign a driver (alternating two)", f"POST /api/parcels/{s.assign_parcel}/assign/ (dispatcher)",
                     lambda i: http.timed("POST", f"/api/parcels/{s.assign_parcel}/assign/", token=as_dispatcher,
                                          json_body={"driver_id": s.assign_drivers[i % 2]}))
        fresh = list(s.status_parcels)
        while len(fresh) < runs:  # used up by earlier runs: make more in the database, untimed
            made = await parcels.create_parcel(db, owner_id=client.id, **new_points())
            await parcels.assign_driver(db, made["_id"], s.assign_drivers[0])
            fresh.append(made["_id"])
        await repeat("status assigned → picked_up (fresh parcels)", "POST /api/parcels/<id>/status/ (dispatcher)",
                     lambda i: http.timed("POST", f"/api/parcels/{fresh[i]}/status/", token=as_dispatcher,
                                          json_body={"status": "picked_up"}), len(fresh))
        await repeat("create a parcel", "POST /api/parcels/ (dispatcher, owner_id)",
                     lambda _: http.timed("POST", "/api/parcels/", token=as_dispatcher,
                                          json_body={"owner_id": client.id, **new_points()}))
        login = {"email": client.email, "password": PASSWORD}
        await repeat("log in (bcrypt at 4 rounds)", "POST /api/token/",
                     lambda _: http.timed("POST", "/api/token/", json_body=login))
        await repeat("tracking socket until `subscribed`", f"ws /ws/tracking/?parcel_id={longest} (owner)",
                     lambda _: socket_handshake(app.server.port, longest, token(client)))
        carrying = s.load_parcels[0]  # on its way: its driver may send its proof (each replaces the one before)
        form = proof_form(*proof_images())
        as_carrier = token(await users.get_user(db, carrying["driver_id"]))
        await repeat("proof of delivery (1600 px photo, signature)",
                     f"POST /api/parcels/{carrying['_id']}/proof/ (driver, {len(form[1]) / 1024:,.0f} KiB)",
                     lambda _: http.timed("POST", f"/api/parcels/{carrying['_id']}/proof/", token=as_carrier,
                                          raw=form))
        csv_file = ("text/csv", import_file(client, IMPORT_ROWS))
        before = await db.last_id("parcels")
        try:
            rows.append(await measure(f"import {IMPORT_ROWS:,} rows (timed whole, ≤ 10 s)",
                                      "POST /api/parcels/import/ (dispatcher)", 2,
                                      lambda _: http.timed("POST", "/api/parcels/import/", token=as_dispatcher,
                                                           raw=csv_file), app, IMPORT_BUDGET_MS))
        finally:  # the year's data as it was, for the load that follows and for the next run
            await db.parcels.delete_many({"seq": {"$gt": before}})
            await db.counters.update_one({"_id": "parcels"}, {"$set": {"value": before}})
    finally:
        http.client.close()
    return rows


# -- sustained writes ---------------------------------------------------------------


async def load_test(app: App, db: Database, s: Subjects, settings: Settings, token: Callable[[User], str],
                    data_dir: Path, seconds: int) -> dict[str, Any]:
    try:
        modules = generator.node_modules()
    except RuntimeError as e:
        print(f"load test: {e}; skipping it")
        return {"skipped": "no load generator"}
    people = await users.get_users(db, [i for p in s.load_parcels for i in (p["driver_id"], p["owner_id"])])
    # The dispatchers take turns watching: each may hold Settings.user_sockets sockets.
    if len(s.load_parcels) > settings.user_sockets * len(s.dispatchers):
        raise RuntimeError(f"{len(s.load_parcels)} parcels need more dispatchers than {len(s.dispatchers)}")
    watchers = [token(d) for d in s.dispatchers]
    fixture = data_dir / "loadgen-fixture.json"
    fixture.write_text(json.dumps({"ws_url": app.ws_url, "parcels": [
        {"parcel_id": p["_id"], "driver_token": token(people[p["driver_id"]]),
         "viewer_tokens": [token(people[p["owner_id"]]), watchers[i % len(watchers)]]}
        for i, p in enumerate(s.load_parcels)]}))
    every, since = settings.location_sample_every, datetime.now(UTC)
    print(f"load test: {len(s.load_parcels)} parcels × {LOAD_RATE_HZ} Hz = {len(s.load_parcels) * LOAD_RATE_HZ:,} "
          f"updates/s for {seconds} s, 2 viewers each; every {every}th update is written")
    drained: list[asyncio.Task] = []

    def on_report(report: dict[str, Any]) -> None:
        if report.get("mode") == "run" and not drained:  # the load has stopped `drain_s` ago
            stopped = time.monotonic() - float(report.get("drain_s") or 0)
            drained.append(asyncio.ensure_future(wait_for_samples(db, report, every, stopped, since)))

    with generator.CpuSampler({"app": app.pid, "db": app.db_pid}) as sampler:
        reports = await generator.run(
            ["--fixture", str(fixture), "--rate", str(LOAD_RATE_HZ), "--duration", str(seconds), "--pid", app.pids,
             "--p99-ms", str(int(BUDGET_MS)), "--per-viewer"], modules=modules, sampler=sampler,
            max_seconds=seconds + 300, on_report=on_report, subscribe_report=False)
    run, connect = (generator.find(reports, "run") or [None])[0], (generator.find(reports, "connect") or [{}])[0]
    if run is None:
        return {"failed": "the load generator reported no run", "reports": reports}
    split, gen = run.get("cpu_split") or {}, run.get("generator") or {}
    return {
        "parcels": len(s.load_parcels), "rate_hz_per_driver": LOAD_RATE_HZ, "seconds": seconds, "app_pid": app.pid,
        "database_pid": app.db_pid, "target_rate": run.get("target_send_rate"),
        "achieved_rate": run.get("achieved_send_rate"), "accepted": run.get("driver_echo_received"),
        "sent": run.get("msgs_sent"), "latency_ms": run.get("latency_ms"), "lost": run.get("lost"),
        "errors": run.get("errors_received"), "error_samples": run.get("error_samples"),
        "unexpected_closes": run.get("unexpected_closes"),
        "connected": f"{connect.get('conns_opened')}/{connect.get('conns_target')}",
        "database_cpu": split.get("db"), "app_cpu": split.get("app"), "window_s": run.get("wall_s"),
        "generator_saturated": gen.get("saturated"), "generator_cpu": gen.get("cpu_util"),
        "foreign_cores": (run.get("machine") or {}).get("foreign_cores"), "pass": run.get("pass"),
        **await drained[0],
    }


async def wait_for_samples(db: Database, run: dict[str, Any], every: int, stopped: float,
                           since: datetime) -> dict[str, Any]:
    """Poll every 100 ms until each parcel has its expected samples (or DRAIN_TIMEOUT_S after the load stopped).

    One query per parcel still short on (parcel_id, timestamp), which matches only the load's
    samples (the embedded server's `count` walks the whole collection)."""
    accepted = {pid: received for pid, kind, _, received in run.get("per_connection", []) if kind == "driver"}
    expected = {pid: n // every for pid, n in accepted.items()}
    counts = dict.fromkeys(expected, 0)
    short = set(expected)
    while True:
        for pid in sorted(short):
            query = {"parcel_id": pid, "timestamp": {"$gte": since}}
            counts[pid] = len(await db.locations.find(query, {"_id": 1}).to_list(None))
        waited = time.monotonic() - stopped
        short = {pid for pid in short if counts[pid] < expected[pid]}
        if not short or waited > DRAIN_TIMEOUT_S:
            break
        await asyncio.sleep(0.1)
    return {"samples_expected": sum(expected.values()), "samples_landed": sum(counts.values()),
            "drain_s": round(waited, 2), "drained": not short}


# -- output -------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"| what | where | status | runs | median ms | p90 ms | ≤ {BUDGET_MS:.0f} ms | answer |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        median, p90 = (f"{v:,.1f}" if v is not None else "-" for v in (r["median_ms"], r["p90_ms"]))
        lines.append(f"| {r['what']} | `{r['where']}` | {r['status']} | {r['runs']} | {median} | {p90} | "
                     f"{r['verdict']} | {r['answer']} |")
    return "\n".join(lines)


def load_summary(result: dict[str, Any]) -> str:
    if "achieved_rate" not in result:
        return f"load test: {result}"
    latency = result.get("latency_ms") or {}
    lines = [
        "| figure | value |", "|---|---|",
        f"| updates sent / target | {result['achieved_rate']}/s of {result['target_rate']}/s "
        f"({result['sent']:,} sent, {result['accepted']:,} accepted) |",
        f"| viewers' latency p50 / p99 / max | {latency.get('p50')} / {latency.get('p99')} / {latency.get('max')} ms |",
        f"| broadcasts lost, errors, sockets closed by the server | {result['lost']}, {result['errors']}, "
        f"{result['unexpected_closes']} |",
        f"| database process CPU (one core = 1.0) | {result['database_cpu']} |",
        f"| app process CPU (one core = 1.0) | {result['app_cpu']} |",
        f"| samples landed / expected | {result['samples_landed']:,} / {result['samples_expected']:,} |",
        f"| drain: load stopped → every sample in | {result['drain_s']} s"
        f"{'' if result['drained'] else f' (not all in after {DRAIN_TIMEOUT_S:.0f} s)'} |",
        f"| generator saturated / other load on the machine | {result['generator_saturated']} / "
        f"{result['foreign_cores']} cores |",
        f"| loadgen's pass (p99 < {BUDGET_MS:.0f} ms, no loss, ≥ 95 % of the rate) | {result['pass']} |",
    ]
    if result.get("error_samples"):
        lines.append(f"| error messages seen | {'; '.join(result['error_samples'])} |")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="10,000 parcels and 100,000 samples in a data dir of their own, 10 s of load")
    parser.add_argument("--skip-load-test", action="store_true", help="only the per-operation table")
    parser.add_argument("--load-seconds", type=int, default=None, help="length of the load (default 60; 10 quick)")
    parser.add_argument("--runs", type=int, default=5, help="runs per operation (default 5)")
    parser.add_argument("--reload", action="store_true", help="drop and regenerate the data even if loaded")
    args = parser.parse_args(argv)
    args.load_seconds = args.load_seconds or (10 if args.quick else 60)
    if args.load_seconds < 1 or args.runs < 1:
        parser.error("--load-seconds and --runs must be positive")
    return args


async def bench(args: argparse.Namespace, sizes: Sizes, data_dir: Path, app: App, settings: Settings) -> None:
    async with database_uri(settings) as (uri, _):
        db = open_database(settings, uri)
        try:
            marker = await ensure_loaded(db, sizes, settings, args.reload)
            print(f"server: starting on port {app.server.port} (it creates its indexes first; this can take minutes)")
            started = time.monotonic()
            await asyncio.to_thread(app.start, SERVER_START_TIMEOUT_S)
            print(f"server: answering after {time.monotonic() - started:.1f} s (pid {app.pid})")
            subjects = await pick_subjects(db, sizes, marker, args.runs)  # over the server's indexes

            def token(user: User) -> str:
                return tokens.issue(user, "access", settings.access_token_ttl, settings.secret_key)

            rows = await measure_all(app, db, subjects, token, args.runs)
            sustained: dict[str, Any] = {"skipped": "--skip-load-test"}
            if not args.skip_load_test:
                sustained = await load_test(app, db, subjects, settings, token, data_dir, args.load_seconds)
        finally:
            await asyncio.to_thread(app.stop, 60)
            await db.close()
    print(f"\n## Every operation over {sizes.parcels:,} parcels, {users_of(sizes):,} users, "
          f"{sizes.locations:,} locations (median of {args.runs}; budget {BUDGET_MS:.0f} ms)\n")
    print(table(rows))
    print(f"\n{sum(r['within_budget'] for r in rows)} of {len(rows)} operations within {BUDGET_MS:.0f} ms. "
          "POST /api/token/ runs bcrypt at 4 rounds here: its cost is deliberate, not a database cost.")
    if not args.skip_load_test:
        print(f"\n## Sustained location updates ({LOAD_PARCELS} parcels × {LOAD_RATE_HZ} Hz)\n")
        print(load_summary(sustained))
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "commit": generator.git_commit(),
        "quick": args.quick, "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "sizes": vars(sizes), "loaded_at": iso(marker["loaded_at"]), "load_seconds": marker["seconds"],
        "budget_ms": BUDGET_MS, "runs": args.runs, "rows": rows, "sustained": sustained,
    }
    (data_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {(data_dir / 'results.json').relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes, data_dir = (QUICK, DATA_DIR / "quick") if args.quick else (FULL, DATA_DIR)
    generator.raise_file_limit()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = app_env(SECRET_KEY=SECRET, BCRYPT_ROUNDS="4", ACCESS_TOKEN_TTL="7200")
    print(f"# volume benchmark{' (quick)' if args.quick else ''}: {data_dir.relative_to(ROOT)}, "
          f"{os.cpu_count()} cores, commit {generator.git_commit()}")
    app = App(env, data_dir)
    try:
        asyncio.run(bench(args, sizes, data_dir, app, Settings.from_env(env, data_dir=data_dir)))
        return 0
    except RuntimeError as e:  # the embedded database's errors among them
        print(f"volume.py: {e}", file=sys.stderr)
        print("\n".join(app.server.output().splitlines()[-30:]), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
