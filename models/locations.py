"""Sampled locations: the history a parcel keeps, and its `last_location`.

Writes go through `SampleWriter`, which batches them on a short timer: the live
broadcast never waits for the database, and under load many samples cost one
`insert_many` and one `bulk_write` instead of two awaited writes each. Its queue is
bounded; a database that cannot be reached keeps the samples queued and retried.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import bson
import pymongo
from bson import ObjectId
from bson.errors import InvalidDocument
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from models.db import Database, iso, next_window, unreachable, utcnow

log = logging.getLogger("parcel.locations")

BATCH_SIZE = 200
WRITE_DEADLINE = 5.0  # seconds one write may take before the database counts as unreachable
MAX_HISTORY_PAGE = 10_000
# How far a fix's time may lie from the server's (docs/protocol.md: offline batches up to 24 h old).
EARLIEST_FIX = timedelta(hours=24)
LATEST_FIX = timedelta(seconds=60)
# An offline batch stores at most one fix per this much recorded time. A phone records every
# 5 s, so a normal batch loses nothing; a flood of batches stores about one row a second per
# parcel, not 200 a message (docs/protocol.md, "Offline batches").
BATCH_SPACING = timedelta(seconds=1)
FIRST_WINDOW = timedelta(hours=1)  # when the parcel's sampling density is not known
MIN_WINDOW = timedelta(minutes=1)
MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True)
class HistoryPage:
    """Samples oldest first; `next_since` is the `since=` of the next page (None: this is the last)."""

    locations: list[dict[str, Any]]
    next_since: datetime | None


def sample(parcel_id: int, driver_id: int, location: dict[str, Any], timestamp: datetime) -> dict[str, Any]:
    """A sample as stored, with its own `_id` (so a retried write stores it once)."""
    return {"_id": ObjectId(), "parcel_id": parcel_id, "driver_id": driver_id, "timestamp": timestamp, **location}


def thin_batch(fixes: list[tuple[dict[str, Any], datetime]],
               after: datetime | None) -> list[tuple[dict[str, Any], datetime]]:
    """The fixes of an offline batch (recorded_at ascending) worth storing: none less than
    `BATCH_SPACING` after `after` (the newest batch fix already stored for the parcel, so a
    replayed batch stores nothing) and at most one per `BATCH_SPACING`, the newest kept."""
    floor = after + BATCH_SPACING if after is not None else None
    kept: list[tuple[dict[str, Any], datetime]] = []
    for location, recorded in reversed(fixes):
        if floor is not None and recorded < floor:
            break
        if not kept or kept[-1][1] - recorded >= BATCH_SPACING:
            kept.append((location, recorded))
    kept.reverse()
    return kept


def sample_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {"lat": doc["lat"], "lng": doc["lng"], "address": doc.get("address", ""), "timestamp": iso(doc["timestamp"])}


async def history(db: Database, parcel: dict[str, Any], *, since: datetime | None = None,
                  limit: int = 1000) -> HistoryPage:
    """A page of a parcel's sampled history, oldest first, after `since` (exclusive).

    Walks forward through windows of time from the parcel's first sample, the first
    sized by how densely it has been sampled on average and the next by `next_window`,
    until one more sample than the page holds is found or now is passed: no query
    matches much more than a page, however long the history."""
    first = parcel.get("samples_from")
    low = since if since is not None else (first - MILLISECOND if first else parcel["created_at"] - EARLIEST_FIX)
    end = utcnow() + LATEST_FIX
    wanted = limit + 1
    found: list[dict[str, Any]] = []
    size = _first_window(parcel, wanted)
    while low < end and len(found) < wanted:
        high = min(low + timedelta(seconds=size), end)
        query = {"parcel_id": parcel["_id"], "timestamp": {"$gt": low, "$lte": high}}
        matched = await db.locations.find(query).to_list(None)
        found += matched
        size = next_window((high - low).total_seconds(), len(matched), wanted - len(found))
        low = high
    found.sort(key=lambda doc: (doc["timestamp"], doc["_id"]))
    if len(found) <= limit:
        return HistoryPage([sample_view(d) for d in found], None)
    page = found[:limit]
    # `since` is exclusive: never end a page inside a run of samples with one timestamp.
    cut = found[limit]["timestamp"]
    trimmed = [d for d in page if d["timestamp"] != cut] or [d for d in found if d["timestamp"] <= cut]
    return HistoryPage([sample_view(d) for d in trimmed], trimmed[-1]["timestamp"])


def _first_window(parcel: dict[str, Any], wanted: int) -> float:
    """Seconds expected to hold `wanted` samples at the parcel's average density."""
    first, count, last = parcel.get("samples_from"), parcel.get("sample_count"), parcel.get("last_location")
    if not (first and count and last):
        return FIRST_WINDOW.total_seconds()
    span = max((last["timestamp"] - first).total_seconds(), 1.0)
    return max(MIN_WINDOW.total_seconds(), wanted * span / count * 1.1)


@dataclass
class ParcelRecord:
    """What a parcel's document learns from its samples: the latest (its last_location),
    when its history begins and how many samples it holds (to size the history's windows)."""

    latest: dict[str, Any]
    first: datetime
    count: int

    def add(self, sample: dict[str, Any]) -> None:
        if sample["timestamp"] >= self.latest["timestamp"]:  # of equal times, the last accepted
            self.latest = sample
        self.first = min(self.first, sample["timestamp"])
        self.count += 1

    def merge(self, other: ParcelRecord) -> None:
        if other.latest["timestamp"] >= self.latest["timestamp"]:
            self.latest = other.latest
        self.first = min(self.first, other.first)
        self.count += other.count

    def update(self) -> UpdateOne:
        """One write by `_id`; the last_location moves only forward (an offline batch can
        arrive after newer fixes)."""
        latest = self.latest
        location = {"lat": latest["lat"], "lng": latest["lng"], "address": latest.get("address", ""),
                    "timestamp": latest["timestamp"], "driver_id": latest["driver_id"]}
        newer = {"$gte": [latest["timestamp"], {"$ifNull": ["$last_location.timestamp", None]}]}
        return UpdateOne({"_id": latest["parcel_id"]}, [{"$set": {
            "last_location": {"$cond": [newer, {"$literal": location}, "$last_location"]},
            "samples_from": {"$min": ["$samples_from", self.first]},
            "sample_count": {"$add": [{"$ifNull": ["$sample_count", 0]}, self.count]},
        }}])


def records(samples: list[dict[str, Any]]) -> dict[int, ParcelRecord]:
    """The samples' news for each of their parcels."""
    found: dict[int, ParcelRecord] = {}
    for sample in samples:
        record = found.get(sample["parcel_id"])
        if record is None:
            found[sample["parcel_id"]] = ParcelRecord(sample, sample["timestamp"], 1)
        else:
            record.add(sample)
    return found


async def store_history(db: Database, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write samples to the history; returns those stored. Samples carry their own `_id`,
    so storing a batch again (a retry) stores each sample once."""
    refused: list[dict[str, Any]] = []
    try:
        await db.locations.insert_many(samples, ordered=False)
    except BulkWriteError as e:  # some refused (or stored by an earlier try): the rest went in
        refused = [w for w in e.details.get("writeErrors", ()) if not _stored_already(w)]
        if refused:
            log.error("could not write %d location samples: %s", len(refused), refused[0].get("errmsg"))
    lost = {samples[w["index"]]["_id"] for w in refused if "index" in w}
    return [s for s in samples if s["_id"] not in lost]


async def update_parcels(db: Database, news: Iterable[ParcelRecord]) -> None:
    """Write what samples taught their parcels (last_location, history extent)."""
    updates = [record.update() for record in news]
    if updates:
        await db.parcels.bulk_write(updates, ordered=False)


async def store(db: Database, samples: list[dict[str, Any]]) -> int:
    """Write samples to the history and their parcels' last_location at once; returns how many were stored."""
    stored = await store_history(db, samples)
    await update_parcels(db, records(stored).values())
    return len(stored)


class SampleWriter:
    """Queues samples and writes them in batches, off the broadcast's path.

    At most `max_queued` samples wait (past that the oldest are dropped and counted).
    A batch the database cannot take for want of a connection stays at the head of the
    queue and is tried again every `retry_interval` seconds; each sample carries its own
    `_id`, so a batch written twice is stored once.

    Samples reach the history within `flush_interval`; a parcel's own document (its
    last_location) is rewritten at most once every `parcel_interval` seconds, with the
    latest of what came meanwhile. Rewriting a parcel costs the embedded server as many
    index writes as the parcels collection has indexes, so a parcel sampled every second
    would otherwise cost five times the history itself. `flush()` writes everything now."""

    def __init__(self, db: Database, flush_interval: float, max_queued: int = 100_000,
                 retry_interval: float = 1.0, parcel_interval: float = 5.0) -> None:
        self.db = db
        self.flush_interval = flush_interval
        self.max_queued = max_queued
        self.retry_interval = retry_interval
        self.parcel_interval = parcel_interval
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._held: dict[int, ParcelRecord] = {}  # parcels' news not yet written to them
        self._parcel_written: dict[int, float] = {}  # when each parcel was last written (time.monotonic)
        self._timer: asyncio.Handle | None = None
        self._timer_due = 0.0  # the loop time it fires at (uvloop's handle of a 0 s delay has no when())
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    @property
    def queued(self) -> int:
        """Samples not yet written to the history (those being written included)."""
        return len(self._queue) + self._in_flight

    @property
    def parcels_pending(self) -> int:
        """Parcels whose last_location waits to be written."""
        return len(self._held)

    def add(self, parcel_id: int, driver_id: int, location: dict[str, Any], timestamp: datetime) -> None:
        """Queue one sample; it is written within `flush_interval` seconds."""
        if len(self._queue) >= self.max_queued:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(sample(parcel_id, driver_id, location, timestamp))
        self._schedule(0 if len(self._queue) >= BATCH_SIZE else self.flush_interval)

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            if self._timer_due <= loop.time() + delay:
                return  # an earlier flush is due anyway
            self._timer.cancel()
        self._timer_due = loop.time() + delay
        self._timer = loop.call_later(delay, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self._flush_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_logged(self) -> None:
        """The timer's flush: nothing awaits it, so what it raises is logged here, not when the task is collected."""
        try:
            await self._flush(everything=False)
        except Exception:
            log.exception("could not flush the location samples on the timer (%d queued, %d parcels' positions held)",
                          self.queued, self.parcels_pending)

    async def flush(self) -> bool:
        """Write everything queued and held so far, after any flush already under way;
        False when the database could not be reached (what is left is retried on a timer)."""
        return await self._flush(everything=True)

    async def _flush(self, everything: bool) -> bool:
        if self._timer is not None and everything:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH_SIZE, len(self._queue)))]
                self._in_flight = len(batch)
                try:
                    stored = await self._write(batch)
                finally:
                    self._in_flight = 0
                if stored is None:
                    self._queue.extendleft(reversed(batch))
                    while len(self._queue) > self.max_queued:
                        self._queue.popleft()
                        self.dropped += 1
                    self._schedule(self.retry_interval)
                    return False
                self._hold(stored)
            return await self._write_parcels(everything)

    def _hold(self, stored: list[dict[str, Any]]) -> None:
        for parcel_id, record in records(stored).items():
            if parcel_id in self._held:
                self._held[parcel_id].merge(record)
            else:
                self._held[parcel_id] = record

    async def _write_parcels(self, everything: bool) -> bool:
        now = time.monotonic()
        due = [pid for pid in self._held
               if everything or now - self._parcel_written.get(pid, -math.inf) >= self.parcel_interval]
        if due:
            try:
                with pymongo.timeout(WRITE_DEADLINE):
                    await update_parcels(self.db, (self._held[pid] for pid in due))
            except PyMongoError as e:
                self.errors += 1
                if unreachable(e):
                    log.warning("the database is unreachable; %d parcels' positions wait (%s)", len(due), str(e)[:120])
                    self._schedule(self.retry_interval)
                    return False
                log.exception("could not write the last location of %d parcels", len(due))
            for pid in due:
                del self._held[pid]
                self._parcel_written[pid] = now
            if len(self._parcel_written) > 4 * len(self._held) + 1000:  # forget parcels long quiet
                self._parcel_written = {p: t for p, t in self._parcel_written.items() if now - t < self.parcel_interval}
        if self._held:
            soonest = min(self._parcel_written.get(pid, now) for pid in self._held) + self.parcel_interval
            self._schedule(max(0.0, soonest - now))
        return True

    async def drain(self, within: float) -> bool:
        """Flush until nothing is queued or held, or `within` seconds pass (shutdown); True if all went."""
        deadline = time.monotonic() + within
        while True:
            with pymongo.timeout(max(0.1, deadline - time.monotonic())):  # a frozen database too
                if await self.flush():
                    break
            if time.monotonic() + self.retry_interval > deadline:
                log.error("%d location samples and %d parcels' positions could not be written before shutdown",
                          self.queued, self.parcels_pending)
                return False
            await asyncio.sleep(self.retry_interval)
        return True

    async def _write(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Write one batch to the history: the samples stored, or None when it should be tried again later."""
        try:
            with pymongo.timeout(WRITE_DEADLINE):
                try:
                    stored = await store_history(self.db, batch)
                except InvalidDocument:  # one sample cannot be encoded (a lone surrogate): write the others
                    stored = await store_history(self.db, self._encodable(batch))
        except PyMongoError as e:
            self.errors += 1
            if unreachable(e):  # down or frozen: keep them for the next try
                log.warning("the database is unreachable; %d samples wait (%s)", self.queued, str(e)[:120])
                return None
            log.exception("could not write %d location samples", len(batch))
            return []
        self.written += len(stored)
        return stored

    def _encodable(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = []
        for sample in batch:
            try:
                bson.encode(sample)
                kept.append(sample)
            except InvalidDocument as e:
                self.errors += 1
                log.error("could not write a location sample: %s", e)
        return kept


def _stored_already(error: dict[str, Any]) -> bool:
    """A duplicate of the sample's own `_id`: an earlier try stored it."""
    if error.get("code") != 11000:
        return False
    pattern = error.get("keyPattern")
    return list(pattern) == ["_id"] if pattern else "_id_" in str(error.get("errmsg", ""))
