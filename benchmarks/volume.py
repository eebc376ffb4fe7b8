"""A year of a delivery business in the embedded database: is every operation still fast? (`make bench-volume`)

It answers two questions (docs/protocol.md, "Lists that page" and "Query shapes"):

1. With 100,000 parcels, 5,505 users and 1,000,000 sampled locations in SecantusDB,
   does every page, API call and socket handshake answer in at most 50 ms?
   Each row of the table is one operation over real HTTP or WebSocket against the
   real server (`app.py serve`), timed from the first byte sent to the last byte
   received (for the socket: until `subscribed` arrives), run 5 times. Read the
   median against the 50 ms budget; p90 (linear interpolation between the runs) shows
   how steady it is. `status` is what the server answered: anything but 2xx (or
   `subscribed`) is not a pass whatever its time, and a 400 usually means the
   parameter (paging, filters) is not implemented yet. A row whose runs take longer
   than ROW_BUDGET_S in total stops early: `runs` then says how many it got.
   `POST /api/token/` runs bcrypt at 4 rounds here (the users' hashes were made at 4):
   bcrypt's cost is deliberate and not a database cost, so this row measures the rest.

2. Do 1,000 location updates a second keep up? 200 active parcels, each with its
   driver and two viewers (the owner and a dispatcher), driven by the reference load
   generator (../shared/bench/loadgen.js) at 5 Hz per driver. With the default
   LOCATION_SAMPLE_EVERY=5 that writes 200 samples a second into the 1M-document
   `locations` collection. Read the achieved rate (≥ 950/s), the viewers' p50/p99
   broadcast latency, the CPU of the database and app processes (a fraction of one
   core: near 1.0 means that process is the bottleneck), and the drain time: how long
   after the load stopped until every expected sample was in the database (a long
   drain means the writes are queueing behind the live traffic).

The data: 5,000 clients, 500 drivers, 5 dispatchers; 100,000 parcels created evenly
over the past 365 days (the newest 1,500 still under way, ~98 % of the rest delivered,
~2 % cancelled); 1,000,000 samples, all within the 90-day retention: five active
parcels hold long histories (10,000 down to 2,000 samples, one every 25 s) and the
rest is shared among the parcels of the last 89 days that had a driver (about 40 per
delivered parcel: a million samples over 90 days of parcels cannot be fewer).
It is generated once into `benchmarks/.volume-data/` (under a minute here; the
server's first start then builds its indexes over it, about 3 minutes) and kept: a
marker document in `counters` records its sizes, and a later run with the same sizes
skips the load (`--reload` forces it). Runs change the data a little (each one
moves a few parcels along, creates a few, and adds the load test's samples).
`--quick` uses a smaller volume in `benchmarks/.volume-data/quick/` for development.
Results are printed and written to `<data dir>/results.json`.

    .venv/bin/python benchmarks/volume.py [--quick] [--skip-load-test] [--load-seconds 60] [--reload] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import http.cookies
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pymongo import MongoClient
from pymongo.database import Database as MongoDatabase
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auth import passwords  # noqa: E402
from benchmarks import generator  # noqa: E402
from benchmarks.generator import cpu_seconds, raise_file_limit  # noqa: E402
from models.db import SCHEMA_VERSION  # noqa: E402
from models.embedded import EmbeddedDatabase, EmbeddedDatabaseError  # noqa: E402
from tests.process import Server, app_env  # noqa: E402

DATA_DIR = ROOT / "benchmarks" / ".volume-data"
QUICK_DATA_DIR = DATA_DIR / "quick"
LOADGEN = ROOT.parent / "shared" / "bench" / "loadgen.js"

DB_NAME = "parcel_tracking"
MARKER_ID = "volume-loaded"
GENERATOR_VERSION = 2  # bump when the generated data changes shape: the next run reloads
SECRET = "volume-bench-" + "k" * 40
PASSWORD = "volume-pass"
EMAIL_DOMAIN = "volume.test"

BUDGET_MS = 50.0
ROW_BUDGET_S = 30.0  # a row stops repeating once its runs have taken this long (at least one run)
REQUEST_TIMEOUT_S = 120.0
SERVER_START_TIMEOUT_S = 900.0  # the first start builds its indexes over a million documents
LOAD_PARCELS = 200
LOAD_RATE_HZ = 5
DRAIN_TIMEOUT_S = 30.0
BATCH = 1000
SAMPLE_SPACING_S = 25.0  # a 5 s device interval, every 5th update kept
RETENTION_DAYS = 89  # one day inside the 90-day retention, so no sample expires right away

CENTRE_BOX = ((28.4, 28.8), (77.0, 77.4))  # New Delhi
ACTIVE_FLOW = ("assigned", "picked_up", "in_transit")
STREETS = ("Janpath", "Rajpath", "Lodhi Road", "Ring Road", "Mathura Road", "Aurobindo Marg",
           "Connaught Place", "Karol Bagh", "Lajpat Nagar", "Saket", "Dwarka Sector 6", "Rohini Sector 9")


# -- the volume ------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much data to generate; the marker records it, so a change reloads."""

    clients: int
    drivers: int
    dispatchers: int
    parcels: int
    locations: int
    active: int  # the newest parcels that are still under way
    long_histories: tuple[int, ...]  # samples of the few active parcels with a long history

    @property
    def users(self) -> int:
        return self.clients + self.drivers + self.dispatchers

    def as_doc(self) -> dict[str, Any]:
        return {**asdict(self), "long_histories": list(self.long_histories)}


FULL = Sizes(clients=5000, drivers=500, dispatchers=5, parcels=100_000, locations=1_000_000,
             active=1500, long_histories=(10_000, 7_000, 5_000, 3_000, 2_000))
QUICK = Sizes(clients=5000, drivers=500, dispatchers=5, parcels=10_000, locations=100_000,
              active=1500, long_histories=(10_000, 7_000, 5_000, 3_000, 2_000))


def email_of(user_id: int, sizes: Sizes) -> str:
    if user_id <= sizes.clients:
        return f"client{user_id}@{EMAIL_DOMAIN}"
    if user_id <= sizes.clients + sizes.drivers:
        return f"driver{user_id - sizes.clients}@{EMAIL_DOMAIN}"
    return f"dispatcher{user_id - sizes.clients - sizes.drivers}@{EMAIL_DOMAIN}"


def first_driver_id(sizes: Sizes) -> int:
    return sizes.clients + 1


def first_dispatcher_id(sizes: Sizes) -> int:
    return sizes.clients + sizes.drivers + 1


@dataclass(slots=True)
class ParcelPlan:
    """One parcel's story, decided before any document is written."""

    id: int
    owner_id: int
    driver_id: int | None
    status: str
    created_at: datetime
    timeline: list[tuple[str, datetime]]
    pickup: dict[str, Any]
    destination: dict[str, Any]
    path_from: tuple[float, float] = (0.0, 0.0)
    path_to: tuple[float, float] = (0.0, 0.0)
    end_frac: float = 1.0  # how far along its path the last sample is
    track_start: datetime | None = None
    track_end: datetime | None = None
    weight: float = 0.0  # its share of the sampled locations
    samples: int = 0
    exact_spacing: bool = False


def ms(moment: datetime) -> datetime:
    """A datetime at the millisecond precision BSON keeps."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def point(rng: random.Random) -> dict[str, Any]:
    (lat0, lat1), (lng0, lng1) = CENTRE_BOX
    return {"lat": round(rng.uniform(lat0, lat1), 6), "lng": round(rng.uniform(lng0, lng1), 6),
            "address": f"{rng.randint(1, 250)} {rng.choice(STREETS)}, New Delhi"}


def plan_parcels(sizes: Sizes, now: datetime, rng: random.Random) -> list[ParcelPlan]:
    """Statuses, drivers, timelines and sample counts for every parcel, oldest first."""
    n, span = sizes.parcels, timedelta(days=365)
    first_active = n - sizes.active + 1
    long_ids = {first_active + k: count for k, count in enumerate(sizes.long_histories)}
    drivers = range(first_driver_id(sizes), first_driver_id(sizes) + sizes.drivers)
    recent = now - timedelta(days=RETENTION_DAYS)
    minutes = lambda a, b: timedelta(minutes=rng.uniform(a, b))  # noqa: E731
    plans: list[ParcelPlan] = []
    for pid in range(1, n + 1):
        created = ms(now - span + span * (pid - 1) / n)
        p = ParcelPlan(id=pid, owner_id=rng.randint(1, sizes.clients), driver_id=None, status="pending",
                       created_at=created, timeline=[("pending", created)], pickup=point(rng),
                       destination=point(rng))
        p.path_from = (p.pickup["lat"], p.pickup["lng"])
        p.path_to = (p.destination["lat"], p.destination["lng"])
        if pid >= first_active:
            newest_rank = n - pid
            if pid in long_ids:
                p.status, p.samples, p.exact_spacing = "in_transit", long_ids[pid], True
                p.track_end = ms(now - timedelta(seconds=30))
                p.track_start = ms(p.track_end - timedelta(seconds=SAMPLE_SPACING_S * (p.samples - 1)))
                assigned = max(created + timedelta(seconds=60), p.track_start - timedelta(minutes=2))
                p.timeline += [("assigned", ms(assigned)), ("picked_up", ms(assigned + timedelta(seconds=40))),
                               ("in_transit", ms(assigned + timedelta(seconds=80)))]
                p.end_frac = 0.6
            elif newest_rank < sizes.active // 10:
                p.status = "pending"  # the newest: not yet assigned
            else:
                p.status = rng.choices(ACTIVE_FLOW, weights=(35, 20, 45))[0]
                steps = ACTIVE_FLOW[: ACTIVE_FLOW.index(p.status) + 1]
                available = (now - timedelta(seconds=60) - created).total_seconds()
                times = sorted(created + timedelta(seconds=available * rng.uniform(0.05, 0.95)) for _ in steps)
                p.timeline += [(s, ms(t)) for s, t in zip(steps, times, strict=True)]
                p.track_start, p.track_end = times[0], ms(now - timedelta(seconds=rng.uniform(5, 120)))
                if p.status == "assigned":  # driving to the pickup
                    p.path_from = (p.pickup["lat"] + 0.02, p.pickup["lng"] + 0.02)
                    p.path_to = (p.pickup["lat"], p.pickup["lng"])
                    p.end_frac, p.weight = rng.uniform(0.3, 0.9), 0.5
                else:
                    p.end_frac = rng.uniform(0.0, 0.2) if p.status == "picked_up" else rng.uniform(0.2, 0.9)
                    p.weight = 0.8 if p.status == "picked_up" else 1.0
            if p.status != "pending":
                p.driver_id = rng.choice(drivers)
        elif rng.random() < 0.98:
            p.status, p.driver_id = "delivered", rng.choice(drivers)
            assigned = created + minutes(5, 90)
            picked = assigned + minutes(15, 120)
            transit = picked + minutes(1, 10)
            delivered = transit + minutes(20, 180)
            p.timeline += [("assigned", ms(assigned)), ("picked_up", ms(picked)), ("in_transit", ms(transit)),
                           ("delivered", ms(delivered))]
            p.track_start, p.track_end = assigned, ms(delivered)
            p.weight = 1.0 if created >= recent else 0.0
        else:
            p.status = "cancelled"
            cancelled = created + minutes(10, 240)
            if rng.random() < 0.5:  # cancelled after assignment, before pickup
                p.driver_id = rng.choice(drivers)
                assigned = created + minutes(5, 9)
                p.timeline.append(("assigned", ms(assigned)))
            p.timeline.append(("cancelled", ms(cancelled)))
        plans.append(p)
    spread_samples(plans, sizes.locations - sum(sizes.long_histories), rng)
    return plans


def spread_samples(plans: list[ParcelPlan], total: int, rng: random.Random) -> None:
    """Share `total` samples among the parcels with a weight, about in proportion to it."""
    if total < 0:
        raise ValueError("the long histories alone exceed the number of locations")
    eligible = [p for p in plans if p.weight > 0]
    if not eligible:
        return
    raw = [p.weight * rng.uniform(0.5, 1.5) for p in eligible]
    scale = total / sum(raw)
    for p, r in zip(eligible, raw, strict=True):
        p.samples = math.floor(r * scale)
    for p in rng.sample(eligible, total - sum(p.samples for p in eligible)):
        p.samples += 1


def sample_at(p: ParcelPlan, k: int, rng: random.Random) -> tuple[float, float, datetime]:
    """The k-th of a parcel's samples: position along its path, and when."""
    assert p.track_start is not None and p.track_end is not None
    if p.exact_spacing or p.samples < 2:
        spacing = SAMPLE_SPACING_S
    else:
        spacing = min(SAMPLE_SPACING_S, (p.track_end - p.track_start).total_seconds() / (p.samples - 1))
    frac = p.end_frac * (k + 1) / p.samples
    jitter = 0.0 if k == p.samples - 1 else 0.0003
    lat = p.path_from[0] + (p.path_to[0] - p.path_from[0]) * frac + rng.uniform(-jitter, jitter)
    lng = p.path_from[1] + (p.path_to[1] - p.path_from[1]) * frac + rng.uniform(-jitter, jitter)
    return round(lat, 6), round(lng, 6), ms(p.track_end - timedelta(seconds=spacing * (p.samples - 1 - k)))


def parcel_doc(p: ParcelPlan, rng: random.Random) -> dict[str, Any]:
    last: dict[str, Any] | None = None
    extent: dict[str, Any] = {}
    if p.samples:
        lat, lng, at = sample_at(p, p.samples - 1, rng)
        last = {"lat": lat, "lng": lng, "address": "", "timestamp": at, "driver_id": p.driver_id}
        # what the product's own writer keeps beside last_location (models.locations.store)
        extent = {"samples_from": sample_at(p, 0, rng)[2], "sample_count": p.samples}
    elif p.status == "delivered":
        last = {"lat": p.destination["lat"], "lng": p.destination["lng"], "address": p.destination["address"],
                "timestamp": p.timeline[-1][1], "driver_id": p.driver_id}
    return {
        "_id": p.id, "seq": p.id, "owner_id": p.owner_id, "driver_id": p.driver_id, "status": p.status,
        "pickup": p.pickup, "destination": p.destination, "last_location": last, "created_at": p.created_at,
        "timeline": [{"status": s, "timestamp": t} for s, t in p.timeline], **extent,
    }


def location_docs(plans: list[ParcelPlan], rng: random.Random) -> Iterator[dict[str, Any]]:
    for p in plans:
        for k in range(p.samples):
            lat, lng, at = sample_at(p, k, rng)
            yield {"parcel_id": p.id, "driver_id": p.driver_id, "lat": lat, "lng": lng, "address": "",
                   "timestamp": at}


def user_docs(sizes: Sizes, password_hash: str, now: datetime) -> Iterator[dict[str, Any]]:
    roles = [("client", "Client", sizes.clients), ("driver", "Driver", sizes.drivers),
             ("dispatcher", "Dispatcher", sizes.dispatchers)]
    user_id = 0
    for role, label, count in roles:
        for n in range(1, count + 1):
            user_id += 1
            yield {"_id": user_id, "email": f"{role}{n}@{EMAIL_DOMAIN}", "name": f"{label} {n}", "role": role,
                   "password_hash": password_hash,
                   "created_at": ms(now - timedelta(days=366) + timedelta(seconds=user_id))}


def batches(docs: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Progress:
    """One line on stderr, rewritten in place: what, percentage, documents, rate, time left."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.shown = 0.0
        self.every = 0.2 if sys.stderr.isatty() else 5.0

    def add(self, count: int, label: str) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.shown >= self.every or self.done == self.total:
            self.shown = now
            elapsed = max(now - self.started, 1e-6)
            rate = self.done / elapsed
            left = (self.total - self.done) / rate if rate else 0
            sys.stderr.write(f"\r  {label:<10} {100 * self.done / self.total:5.1f}%  {self.done:>9,}/{self.total:,} "
                             f"docs  {rate:>6,.0f} docs/s  {duration(left)} left   ")
            sys.stderr.flush()

    def finish(self) -> float:
        sys.stderr.write("\n")
        return time.monotonic() - self.started


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def ensure_loaded(db: MongoDatabase, sizes: Sizes, reload: bool) -> dict[str, Any]:
    """The marker of a loaded volume: the one there, or a new one after loading everything."""
    marker = db.counters.find_one({"_id": MARKER_ID})
    if (not reload and marker and marker.get("sizes") == sizes.as_doc()
            and marker.get("generator") == GENERATOR_VERSION):
        age = datetime.now(UTC) - marker["loaded_at"]
        print(f"data: already loaded {marker['loaded_at']:%Y-%m-%d %H:%M} UTC ({age.days} days ago, "
              f"took {duration(marker['seconds'])}); skipping the load (--reload to redo it)")
        if age > timedelta(days=7):
            print("  note: the data is over a week old: its active parcels are that much older and the 90-day "
                  "retention is removing samples; --reload for fresh figures")
        return marker
    print(f"data: loading {sizes.users:,} users, {sizes.parcels:,} parcels, {sizes.locations:,} locations "
          f"(batches of {BATCH:,}, unordered)")
    now = ms(datetime.now(UTC))
    rng = random.Random(20260101)
    password_hash = asyncio.run(passwords.hash_password(PASSWORD, 4))
    plans = plan_parcels(sizes, now, rng)
    db.client.drop_database(db.name)
    progress = Progress(sizes.users + sizes.parcels + sizes.locations)
    collections: list[tuple[str, Iterable[dict[str, Any]]]] = [
        ("users", user_docs(sizes, password_hash, now)),
        ("parcels", (parcel_doc(p, rng) for p in plans)),
        ("locations", location_docs(plans, rng)),
    ]
    for name, docs in collections:
        for batch in batches(docs, BATCH):
            db[name].insert_many(batch, ordered=False)
            progress.add(len(batch), name)
    seconds = progress.finish()
    db.counters.insert_many([{"_id": "parcels", "value": sizes.parcels}, {"_id": "users", "value": sizes.users},
                             {"_id": "schema", "value": SCHEMA_VERSION}])
    marker = {"_id": MARKER_ID, "sizes": sizes.as_doc(), "generator": GENERATOR_VERSION, "loaded_at": now,
              "seconds": seconds, "long_parcels": [p.id for p in plans if p.exact_spacing]}
    db.counters.insert_one(marker)
    print(f"data: loaded {progress.total:,} documents in {duration(seconds)} "
          f"({progress.total / seconds:,.0f} docs/s)")
    return marker


# -- what to measure on ----------------------------------------------------------


@dataclass
class Subjects:
    """The users and parcels each measurement uses, read from the database as it is now."""

    sizes: Sizes
    long_parcels: list[int]
    client: int  # owner of the longest history
    driver: int  # its driver
    dispatcher: int
    old_parcel: int  # a delivered parcel from mid-year
    since: str  # the timestamp that ends the first page of the longest history
    assign_parcel: int
    assign_drivers: tuple[int, int]
    status_parcels: list[int]
    load_parcels: list[dict[str, Any]]  # {_id, driver_id, owner_id}

    def email(self, user_id: int) -> str:
        return email_of(user_id, self.sizes)


def chunks(values: list[int], size: int = 100) -> Iterator[list[int]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def pick_subjects(db: MongoDatabase, sizes: Sizes, marker: dict[str, Any], runs: int) -> Subjects:
    """Everything by `_id` lists of at most 100 (the embedded server's fast shape)."""
    last_id = int(db.counters.find_one({"_id": "parcels"})["value"])
    ids = list(range(sizes.parcels - sizes.active + 1, last_id + 1))
    docs: list[dict[str, Any]] = []
    for chunk in chunks(ids):
        docs += db.parcels.find({"_id": {"$in": chunk}}, {"status": 1, "driver_id": 1, "owner_id": 1})
    docs.sort(key=lambda d: d["_id"])
    by_id = {d["_id"]: d for d in docs}
    long_parcels = list(marker["long_parcels"])
    first = by_id[long_parcels[0]]
    history = db.locations.find({"parcel_id": first["_id"]}, {"timestamp": 1}).sort([("timestamp", 1), ("_id", 1)])
    stamps = [d["timestamp"] for d in history]
    since = iso(stamps[min(999, len(stamps) - 1)])
    reserved = set(long_parcels)
    under_way = [d for d in docs if d["_id"] not in reserved and d["status"] in ACTIVE_FLOW and d.get("driver_id")]
    load: list[dict[str, Any]] = []
    seen_drivers: set[int] = set()
    for preferred in (("picked_up", "in_transit"), ACTIVE_FLOW):
        for d in reversed(under_way):
            if len(load) < LOAD_PARCELS and d["status"] in preferred and d["driver_id"] not in seen_drivers:
                load.append(d)
                seen_drivers.add(d["driver_id"])
    reserved |= {d["_id"] for d in load}
    rest = [d for d in under_way if d["_id"] not in reserved]
    assign = next((d for d in rest if d["status"] == "in_transit"), rest[0])
    reserved.add(assign["_id"])
    drivers = [i for i in range(first_driver_id(sizes), first_driver_id(sizes) + 3) if i != assign["driver_id"]]
    status_parcels = [d["_id"] for d in rest if d["status"] == "assigned" and d["_id"] not in reserved][:runs]
    return Subjects(
        sizes=sizes, long_parcels=long_parcels, client=first["owner_id"], driver=first["driver_id"],
        dispatcher=first_dispatcher_id(sizes), old_parcel=sizes.parcels // 2 + 7, since=since,
        assign_parcel=assign["_id"], assign_drivers=(drivers[0], drivers[1]), status_parcels=status_parcels,
        load_parcels=load,
    )


def iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- the server --------------------------------------------------------------------


def start_server(server: Server) -> None:
    """Start `app.py serve` and wait until it answers; the first start over a fresh volume builds its indexes."""
    started = time.monotonic()
    print(f"server: starting on port {server.port} (it creates its indexes first; this can take minutes)")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(server.start, SERVER_START_TIMEOUT_S)
        while True:
            try:
                future.result(timeout=15)
                break
            except concurrent.futures.TimeoutError:
                print(f"server: still waiting for it to listen ({duration(time.monotonic() - started)})", flush=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(server.url + "/login", timeout=30) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, OSError) as e:
            if time.monotonic() > deadline or (server.process and server.process.poll() is not None):
                raise RuntimeError(f"the server does not answer GET /login: {e}") from None
        time.sleep(0.2)
    assert server.process is not None
    print(f"server: answering after {time.monotonic() - started:.1f} s (pid {server.process.pid})")


def database_pid(data_dir: Path) -> int:
    return int(json.loads((data_dir / "db-server.json").read_text())["pid"])


# -- measuring ---------------------------------------------------------------------


@dataclass
class Row:
    what: str
    where: str
    statuses: list[str] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)
    answer: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.statuses) and all(s.startswith("2") or s == "subscribed" for s in self.statuses)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    @property
    def p90(self) -> float | None:
        if len(self.times_ms) < 2:
            return self.median
        return statistics.quantiles(self.times_ms, n=10, method="inclusive")[8]

    @property
    def status(self) -> str:
        if not self.statuses:
            return "not run"
        counts: dict[str, int] = {}
        for s in self.statuses:
            counts[s] = counts.get(s, 0) + 1
        if len(counts) == 1:
            return self.statuses[0]
        return ", ".join(f"{s} ×{n}" for s, n in counts.items())

    @property
    def verdict(self) -> str:
        if not self.ok:
            return "no (failed)"
        return "yes" if (self.median or 0) <= BUDGET_MS else "no"

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "where": self.where, "status": self.status, "statuses": self.statuses,
                "runs": len(self.times_ms), "times_ms": [round(t, 2) for t in self.times_ms],
                "median_ms": rounded(self.median), "p90_ms": rounded(self.p90), "within_budget": self.verdict == "yes",
                "answer": self.answer}


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Outcome:
    status: str
    ms: float
    answer: str = ""


class Http:
    """Real HTTP to the server: API tokens and page login cookies per user, refreshed when old."""

    def __init__(self, base: str, subjects: Subjects) -> None:
        self.base = base
        self.subjects = subjects
        self.client = AsyncHTTPClient(force_instance=True, max_body_size=1 << 30, max_buffer_size=1 << 30)
        self._tokens: dict[int, tuple[float, str]] = {}
        self._cookies: dict[int, str] = {}

    async def fetch(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                    body: bytes | None = None) -> HTTPResponse:
        request = HTTPRequest(self.base + path, method=method, headers=headers or {},
                              body=body if body is not None or method in ("GET", "HEAD") else b"",
                              follow_redirects=False, request_timeout=REQUEST_TIMEOUT_S, connect_timeout=10,
                              decompress_response=False)
        return await self.client.fetch(request, raise_error=False)

    async def timed(self, method: str, path: str, *, token: str | None = None, cookie: str | None = None,
                    json_body: Any = None) -> Outcome:
        headers: dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if cookie:
            headers["Cookie"] = cookie
        body = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(json_body).encode()
        started = time.perf_counter()
        response = await self.fetch(method, path, headers=headers, body=body)
        elapsed = (time.perf_counter() - started) * 1000
        if response.code == 599:
            return Outcome(f"error: {type(response.error).__name__}", elapsed)
        return Outcome(str(response.code), elapsed, describe(response))

    async def token(self, user_id: int) -> str:
        """An API access token (re-issued after 10 minutes: they live 15)."""
        cached = self._tokens.get(user_id)
        if cached and time.monotonic() - cached[0] < 600:
            return cached[1]
        body = json.dumps({"email": self.subjects.email(user_id), "password": PASSWORD}).encode()
        response = await self.fetch("POST", "/api/token/", headers={"Content-Type": "application/json"}, body=body)
        if response.code != 200:
            raise RuntimeError(f"POST /api/token/ for user {user_id} answered {response.code}")
        access = json.loads(response.body)["access"]
        self._tokens[user_id] = (time.monotonic(), access)
        return access

    async def cookie(self, user_id: int) -> str:
        """A page login: GET /login for the XSRF cookie, POST the form, keep every cookie set."""
        if user_id in self._cookies:
            return self._cookies[user_id]
        jar: dict[str, str] = {}
        first = await self.fetch("GET", "/login")
        take_cookies(first, jar)
        form = urlencode({"email": self.subjects.email(user_id), "password": PASSWORD,
                          "_xsrf": jar.get("_xsrf", "")}).encode()
        login = await self.fetch("POST", "/login", body=form, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie_header(jar)})
        take_cookies(login, jar)
        if login.code != 302 or len(jar) < 2:
            raise RuntimeError(f"page login for user {user_id} answered {login.code} without a login cookie")
        self._cookies[user_id] = cookie_header(jar)
        return self._cookies[user_id]

    def close(self) -> None:
        self.client.close()


def take_cookies(response: HTTPResponse, jar: dict[str, str]) -> None:
    for header in response.headers.get_list("Set-Cookie"):
        parsed = http.cookies.SimpleCookie()
        parsed.load(header)
        for name, morsel in parsed.items():
            jar[name] = morsel.value


def cookie_header(jar: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def describe(response: HTTPResponse) -> str:
    """What came back, briefly: size, items in a JSON list, and whether a next page is linked."""
    size = len(response.body or b"")
    parts = [f"{size / 1024:,.1f} KiB" if size >= 1024 else f"{size} B"]
    if "json" in response.headers.get("Content-Type", ""):
        try:
            data = json.loads(response.body)
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


async def measure(row: Row, runs: int, op: Callable[[int], Awaitable[Outcome]], server: Server) -> Row:
    """Run `op` up to `runs` times (fewer once ROW_BUDGET_S is spent), keeping each outcome."""
    spent = 0.0
    for i in range(runs):
        if server.process is not None and server.process.poll() is not None:
            row.statuses.append("server exited")
            break
        try:
            outcome = await op(i)
        except Exception as e:  # whatever the server does, the row records it and the benchmark goes on
            outcome = Outcome(f"error: {type(e).__name__}: {str(e)[:80]}", math.nan)
        row.statuses.append(outcome.status)
        if not math.isnan(outcome.ms):
            row.times_ms.append(outcome.ms)
            spent += outcome.ms / 1000
        row.answer = outcome.answer or row.answer
        if spent > ROW_BUDGET_S:
            break
    median = f"{row.median:,.1f} ms" if row.median is not None else "-"
    print(f"  {row.what:<44} {row.status:<14} median {median}", flush=True)
    return row


async def socket_handshake(port: int, parcel_id: int, token: str) -> Outcome:
    url = f"ws://127.0.0.1:{port}/ws/tracking/?parcel_id={parcel_id}&token={token}"
    started = time.perf_counter()
    ws: WebSocketClientConnection | None = None
    try:
        ws = await asyncio.wait_for(websocket_connect(url), REQUEST_TIMEOUT_S)
        while True:
            message = await asyncio.wait_for(ws.read_message(), REQUEST_TIMEOUT_S)
            if message is None:
                return Outcome(f"closed {ws.close_code}", (time.perf_counter() - started) * 1000)
            data = json.loads(message)
            if data.get("type") == "subscribed":
                return Outcome("subscribed", (time.perf_counter() - started) * 1000, f"role {data.get('role')}")
    finally:
        if ws is not None:
            ws.close()


async def measure_all(server: Server, subjects: Subjects, runs: int) -> list[Row]:
    http = Http(server.url, subjects)
    s = subjects
    dispatcher, client, driver = s.dispatcher, s.client, s.driver
    longest = s.long_parcels[0]
    rows: list[Row] = []

    async def get(what: str, path: str, user: int, role: str, as_page: bool) -> None:
        """A GET as a browser (login cookie) or as a script (Bearer token)."""
        row = Row(what, f"GET {path} ({role})")
        try:
            credentials = {"cookie": await http.cookie(user)} if as_page else {"token": await http.token(user)}
        except Exception as e:
            return failed(row, e)
        rows.append(await measure(row, runs, lambda _: http.timed("GET", path, **credentials), server))

    async def page(what: str, path: str, user: int, role: str) -> None:
        await get(what, path, user, role, as_page=True)

    async def api(what: str, path: str, user: int, role: str) -> None:
        await get(what, path, user, role, as_page=False)

    def failed(row: Row, error: Exception) -> None:
        row.statuses.append(f"login failed: {str(error)[:80]}")
        print(f"  {row.what:<44} {row.status}", flush=True)
        rows.append(row)

    try:
        print("pages (login cookie):")
        await page("dispatch board, first page", "/dispatch", dispatcher, "dispatcher")
        await page("dispatch board, delivered", "/dispatch?status=delivered", dispatcher, "dispatcher")
        await page("dispatch search by client email", f"/dispatch?q={s.email(client)}", dispatcher, "dispatcher")
        await page("dispatch search by parcel id", f"/dispatch?q={s.old_parcel}", dispatcher, "dispatcher")
        await page("client's parcels", "/parcels", client, "client")
        await page("driver's parcels", "/driver", driver, "driver")
        await page("track page (10,000-sample history)", f"/parcels/{longest}/track", client, "owner")

        print("API reads (Bearer token):")
        await api("parcels, first page", "/api/parcels/", dispatcher, "dispatcher")
        await api("parcels, limit=500", "/api/parcels/?limit=500", dispatcher, "dispatcher")
        await api("parcels, before=50000", "/api/parcels/?before=50000", dispatcher, "dispatcher")
        await api("parcels, status=cancelled", "/api/parcels/?status=cancelled", dispatcher, "dispatcher")
        await api("parcels, active=1", "/api/parcels/?active=1", dispatcher, "dispatcher")
        await api("parcels of a client", "/api/parcels/", client, "client")
        await api("parcels of a driver", "/api/parcels/", driver, "driver")
        await api("one parcel", f"/api/parcels/{s.old_parcel}/", dispatcher, "dispatcher")
        await api("locations, 512 (the issue's row)", f"/api/parcels/{longest}/locations/?limit=512", client,
                  "owner")
        await api("locations, first page (10,000 kept)", f"/api/parcels/{longest}/locations/", client, "owner")
        since = urlencode({"since": s.since})
        await api("locations, since= page", f"/api/parcels/{longest}/locations/?{since}", client, "owner")

        print("writes, logins and the socket:")
        token = await http.token(dispatcher)

        def assign(i: int) -> Awaitable[Outcome]:
            body = {"driver_id": s.assign_drivers[i % 2]}
            return http.timed("POST", f"/api/parcels/{s.assign_parcel}/assign/", token=token, json_body=body)

        rows.append(await measure(Row("assign a driver (alternating two)", f"POST /api/parcels/{s.assign_parcel}"
                                      "/assign/ (dispatcher)"), runs, assign, server))

        status_parcels = list(s.status_parcels)
        while len(status_parcels) < runs:  # used up by earlier runs: make more, through the API, untimed
            try:
                status_parcels.append(await new_assigned_parcel(http, token, s))
            except Exception as e:
                print(f"  (could not make an assigned parcel: {e}; measuring {len(status_parcels)} runs)")
                break

        def status(i: int) -> Awaitable[Outcome]:
            return http.timed("POST", f"/api/parcels/{status_parcels[i]}/status/", token=token,
                              json_body={"status": "picked_up"})

        rows.append(await measure(Row("status assigned → picked_up (fresh parcels)",
                                      "POST /api/parcels/<id>/status/ (dispatcher)"), len(status_parcels), status,
                                  server))

        def create(_: int) -> Awaitable[Outcome]:
            return http.timed("POST", "/api/parcels/", token=token, json_body=new_parcel_body(s.client))

        rows.append(await measure(Row("create a parcel", "POST /api/parcels/ (dispatcher, owner_id)"),
                                  runs, create, server))

        def login(_: int) -> Awaitable[Outcome]:
            body = {"email": s.email(client), "password": PASSWORD}
            return http.timed("POST", "/api/token/", json_body=body)

        rows.append(await measure(Row("log in (bcrypt at 4 rounds)", "POST /api/token/"),
                                  runs, login, server))

        owner_token = await http.token(client)
        rows.append(await measure(
            Row("tracking socket until `subscribed`", f"ws /ws/tracking/?parcel_id={longest} (owner)"),
            runs, lambda _: socket_handshake(server.port, longest, owner_token), server))
    finally:
        http.close()
    return rows


def new_parcel_body(owner_id: int) -> dict[str, Any]:
    rng = random.Random()
    return {"owner_id": owner_id, "pickup": point(rng), "destination": point(rng)}


async def new_assigned_parcel(http: Http, token: str, s: Subjects) -> int:
    created = await http.fetch("POST", "/api/parcels/", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        body=json.dumps(new_parcel_body(s.client)).encode())
    if created.code != 201:
        raise RuntimeError(f"could not create a parcel to move along: {created.code}")
    parcel_id = int(json.loads(created.body)["id"])
    assigned = await http.fetch("POST", f"/api/parcels/{parcel_id}/assign/", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        body=json.dumps({"driver_id": s.assign_drivers[0]}).encode())
    if assigned.code != 200:
        raise RuntimeError(f"could not assign parcel {parcel_id}: {assigned.code}")
    return parcel_id


# -- sustained writes ---------------------------------------------------------------


def node_modules() -> Path | None:
    """`ws` for the load generator (benchmarks/generator.py's), or None: the load test is skipped."""
    try:
        return generator.node_modules()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"load test: {e}; skipping it")
        return None


def located(db: MongoDatabase, parcel_ids: Iterable[int], since: datetime) -> dict[int, int]:
    """Samples per parcel stored since `since`: one query each on (parcel_id, timestamp), which
    matches only those (the embedded server's `count` walks the whole collection)."""
    return {pid: len(db.locations.find({"parcel_id": pid, "timestamp": {"$gte": since}}, {"_id": 1}).to_list())
            for pid in parcel_ids}


async def load_test(server: Server, db: MongoDatabase, subjects: Subjects, data_dir: Path, seconds: int,
                    sample_every: int) -> dict[str, Any]:
    modules = node_modules()
    if modules is None:
        return {"skipped": "no load generator"}
    http = Http(server.url, subjects)
    try:
        # The dispatchers take turns watching: one user may hold at most 100 sockets (Settings.user_sockets).
        first = first_dispatcher_id(subjects.sizes)
        dispatcher_tokens = [await http.token(first + i) for i in range(subjects.sizes.dispatchers)]
        fixture_parcels = []
        for i, p in enumerate(subjects.load_parcels):
            fixture_parcels.append({"parcel_id": p["_id"], "driver_token": await http.token(p["driver_id"]),
                                    "viewer_tokens": [await http.token(p["owner_id"]),
                                                      dispatcher_tokens[i % len(dispatcher_tokens)]]})
    finally:
        http.close()
    fixture = data_dir / "loadgen-fixture.json"
    fixture.write_text(json.dumps({"ws_url": f"ws://127.0.0.1:{server.port}/ws/tracking/",
                                   "parcels": fixture_parcels}))
    ids = [p["_id"] for p in subjects.load_parcels]
    load_start = datetime.now(UTC)
    before = {pid: 0 for pid in ids}  # counted from the load's start
    assert server.process is not None
    app_pid, db_pid = server.process.pid, database_pid(data_dir)
    print(f"load test: {len(ids)} parcels × {LOAD_RATE_HZ} Hz = {len(ids) * LOAD_RATE_HZ:,} updates/s for "
          f"{seconds} s, 2 viewers each; every {sample_every}th update is written")
    command = ["node", str(LOADGEN), "--fixture", str(fixture), "--rate", str(LOAD_RATE_HZ), "--duration",
               str(seconds), "--drain", "5", "--pid", f"{app_pid},{db_pid}", "--p99-ms", str(int(BUDGET_MS)),
               "--per-viewer", "--max-total-s", str(seconds + 300)]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "BENCH_NODE_MODULES": str(modules)})
    assert process.stdout is not None and process.stderr is not None
    window: dict[str, float | None] = {}
    reports: dict[str, dict[str, Any]] = {}
    drained: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def read_log() -> None:
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            sys.stderr.write(f"  {line}\n")
            if "step 0:" in line and "msg/s for" in line and "start" not in window:
                window.update(start=time.monotonic(), app0=cpu_seconds(app_pid), db0=cpu_seconds(db_pid))

    async def read_reports() -> None:
        async for raw in process.stdout:
            try:
                report = json.loads(raw)
            except ValueError:
                continue
            reports[report.get("mode", "?")] = report
            if report.get("mode") == "run" and not drained.done():
                window.update(end=time.monotonic(), app1=cpu_seconds(app_pid), db1=cpu_seconds(db_pid))
                stopped = time.monotonic() - float(report.get("drain_s") or 0)
                drained.set_result(await wait_for_samples(db, report, before, sample_every, stopped, load_start))

    readers = asyncio.gather(read_log(), read_reports())
    await process.wait()
    await readers
    run = reports.get("run")
    if run is None:
        return {"failed": "the load generator reported no run", "reports": reports}
    samples = drained.result()
    wall = float(window.get("end", 0) or 0) - float(window.get("start", 0) or 0)

    def share(a: str, b: str) -> float | None:
        first, last = window.get(a), window.get(b)
        return None if first is None or last is None or wall <= 0 else round((last - first) / wall, 3)

    connect = reports.get("connect", {})
    return {
        "parcels": len(ids), "rate_hz_per_driver": LOAD_RATE_HZ, "seconds": seconds, "app_pid": app_pid,
        "database_pid": db_pid,
        "target_rate": run.get("target_send_rate"), "achieved_rate": run.get("achieved_send_rate"),
        "accepted": run.get("driver_echo_received"), "sent": run.get("msgs_sent"),
        "latency_ms": run.get("latency_ms"), "lost": run.get("lost"), "errors": run.get("errors_received"),
        "error_samples": run.get("error_samples"), "unexpected_closes": run.get("unexpected_closes"),
        "connected": f"{connect.get('conns_opened')}/{connect.get('conns_target')}",
        "database_cpu": share("db0", "db1"), "app_cpu": share("app0", "app1"), "window_s": round(wall, 1),
        "generator_saturated": (run.get("generator") or {}).get("saturated"),
        "generator_cpu": (run.get("generator") or {}).get("cpu_util"),
        "foreign_cores": (run.get("machine") or {}).get("foreign_cores"), "pass": run.get("pass"),
        **samples,
    }


async def wait_for_samples(db: MongoDatabase, run: dict[str, Any], before: dict[int, int], sample_every: int,
                           stopped: float, since: datetime) -> dict[str, Any]:
    """Poll every 100 ms until each parcel has its expected samples (or DRAIN_TIMEOUT_S after the load stopped).

    Each round recounts only the parcels still short, so a round is quick once most are in."""
    accepted = {pid: received for pid, kind, _, received in run.get("per_connection", []) if kind == "driver"}
    expected = {pid: n + accepted.get(pid, 0) // sample_every for pid, n in before.items()}
    counts = dict(before)
    short = set(before)
    while True:
        counts.update(await asyncio.to_thread(located, db, sorted(short), since))
        waited = time.monotonic() - stopped
        short = {pid for pid in short if counts[pid] < expected[pid]}
        if not short or waited > DRAIN_TIMEOUT_S:
            break
        await asyncio.sleep(0.1)
    return {"samples_expected": sum(expected.values()) - sum(before.values()),
            "samples_landed": sum(counts.values()) - sum(before.values()),
            "drain_s": round(waited, 2), "drained": not short}


# -- output -------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = [f"| what | where | status | runs | median ms | p90 ms | ≤ {BUDGET_MS:.0f} ms | answer |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        median = f"{r.median:,.1f}" if r.median is not None else "-"
        p90 = f"{r.p90:,.1f}" if r.p90 is not None else "-"
        lines.append(f"| {r.what} | `{r.where}` | {r.status} | {len(r.times_ms)} | {median} | {p90} | "
                     f"{r.verdict} | {r.answer} |")
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


def git_commit() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


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
    if args.load_seconds is None:
        args.load_seconds = 10 if args.quick else 60
    if args.load_seconds < 1 or args.runs < 1:
        parser.error("--load-seconds and --runs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes, data_dir = (QUICK, QUICK_DATA_DIR) if args.quick else (FULL, DATA_DIR)
    raise_file_limit()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = app_env(SECRET_KEY=SECRET, BCRYPT_ROUNDS="4")
    sample_every = int(env.get("LOCATION_SAMPLE_EVERY") or 5)
    print(f"# volume benchmark{' (quick)' if args.quick else ''}: {data_dir.relative_to(ROOT)}, "
          f"{os.cpu_count()} cores, commit {git_commit()}")
    embedded = EmbeddedDatabase(data_dir)
    try:
        uri = embedded.start()
    except EmbeddedDatabaseError as e:
        print(f"volume.py: {e}", file=sys.stderr)
        return 1
    client: MongoClient = MongoClient(uri, tz_aware=True)
    server: Server | None = None
    try:
        db = client[DB_NAME]
        marker = ensure_loaded(db, sizes, args.reload)
        subjects = pick_subjects(db, sizes, marker, args.runs)
        server = Server(env, "--data-dir", str(data_dir), "--no-demo")
        start_server(server)
        rows = asyncio.run(measure_all(server, subjects, args.runs))
        sustained: dict[str, Any] = {"skipped": "--skip-load-test"}
        if not args.skip_load_test:
            sustained = asyncio.run(load_test(server, db, subjects, data_dir, args.load_seconds, sample_every))
        print()
        print(f"## Every operation over {sizes.parcels:,} parcels, {sizes.users:,} users, "
              f"{sizes.locations:,} locations (median of {args.runs}; budget {BUDGET_MS:.0f} ms)\n")
        print(table(rows))
        passed = sum(r.verdict == "yes" for r in rows)
        print(f"\n{passed} of {len(rows)} operations within {BUDGET_MS:.0f} ms. POST /api/token/ runs bcrypt at "
              "4 rounds here: its cost is deliberate, not a database cost.")
        if not args.skip_load_test:
            print(f"\n## Sustained location updates ({LOAD_PARCELS} parcels × {LOAD_RATE_HZ} Hz)\n")
            print(load_summary(sustained))
        results = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "commit": git_commit(), "quick": args.quick,
            "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
            "sizes": sizes.as_doc(), "loaded_at": iso(marker["loaded_at"]), "load_seconds": marker["seconds"],
            "budget_ms": BUDGET_MS, "runs": args.runs, "rows": [r.as_dict() for r in rows],
            "sustained": sustained,
        }
        (data_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        print(f"\nresults: {(data_dir / 'results.json').relative_to(ROOT)}")
        return 0
    except RuntimeError as e:
        print(f"volume.py: {e}", file=sys.stderr)
        if server is not None:
            print("\n".join(server.output().splitlines()[-30:]), file=sys.stderr)
        return 1
    finally:
        if server is not None and server.process is not None:
            with contextlib.suppress(AssertionError):
                server.stop(timeout=60)
        client.close()
        embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
