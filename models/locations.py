"""Sampled locations: the history a parcel keeps, and its `last_location`.

Writes go through `SampleWriter`, which batches them on a short timer: the live
broadcast never waits for the database, and under load many samples cost one
`insert_many` and one `bulk_write` instead of two awaited writes each. Its queue is
bounded; a database that cannot be reached keeps the samples queued and retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import bson
from bson import ObjectId
from bson.errors import InvalidDocument
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, ConnectionFailure, PyMongoError

from models.db import Database, iso, next_window, utcnow

log = logging.getLogger("parcel.locations")

BATCH_SIZE = 200
MAX_HISTORY_PAGE = 10_000
# How far a fix's time may lie from the server's (docs/protocol.md: offline batches up to 24 h old).
EARLIEST_FIX = timedelta(hours=24)
LATEST_FIX = timedelta(seconds=60)
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
    return max(MIN_WINDOW.total_seconds(), wanted * span / count * 1.25)


def _parcel_update(samples: list[dict[str, Any]]) -> UpdateOne:
    """One write by `_id` for a parcel's samples in a batch: its last_location (unless a
    newer one is stored: an offline batch can arrive after newer fixes), when its history
    begins and how many samples it holds (for sizing the history's windows)."""
    latest = max(reversed(samples), key=lambda s: s["timestamp"])  # of equal times, the last accepted
    location = {"lat": latest["lat"], "lng": latest["lng"], "address": latest.get("address", ""),
                "timestamp": latest["timestamp"], "driver_id": latest["driver_id"]}
    newer = {"$gte": [latest["timestamp"], {"$ifNull": ["$last_location.timestamp", None]}]}
    return UpdateOne({"_id": latest["parcel_id"]}, [{"$set": {
        "last_location": {"$cond": [newer, {"$literal": location}, "$last_location"]},
        "samples_from": {"$min": ["$samples_from", min(s["timestamp"] for s in samples)]},
        "sample_count": {"$add": [{"$ifNull": ["$sample_count", 0]}, len(samples)]},
    }}])


async def store(db: Database, samples: list[dict[str, Any]]) -> int:
    """Write samples to the history and move their parcels' last_location; returns how
    many were stored. Samples carry their own `_id`, so storing a batch again (a retry)
    stores each sample once."""
    refused: list[dict[str, Any]] = []
    try:
        await db.locations.insert_many(samples, ordered=False)
    except BulkWriteError as e:  # some refused (or stored by an earlier try): the rest went in
        refused = [w for w in e.details.get("writeErrors", ()) if not _stored_already(w)]
        if refused:
            log.error("could not write %d location samples: %s", len(refused), refused[0].get("errmsg"))
    lost = {samples[w["index"]]["_id"] for w in refused if "index" in w}
    by_parcel: dict[int, list[dict[str, Any]]] = {}
    for sample in samples:
        if sample["_id"] not in lost:
            by_parcel.setdefault(sample["parcel_id"], []).append(sample)
    if by_parcel:
        await db.parcels.bulk_write([_parcel_update(group) for group in by_parcel.values()], ordered=False)
    return len(samples) - len(lost)


class SampleWriter:
    """Queues samples and writes them in batches, off the broadcast's path.

    At most `max_queued` samples wait (past that the oldest are dropped and counted).
    A batch the database cannot take for want of a connection stays at the head of the
    queue and is tried again every `retry_interval` seconds; each sample carries its own
    `_id`, so a batch written twice is stored once."""

    def __init__(self, db: Database, flush_interval: float, max_queued: int = 100_000,
                 retry_interval: float = 1.0) -> None:
        self.db = db
        self.flush_interval = flush_interval
        self.max_queued = max_queued
        self.retry_interval = retry_interval
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    @property
    def queued(self) -> int:
        """Samples not yet written (those being written included)."""
        return len(self._queue) + self._in_flight

    def add(self, parcel_id: int, driver_id: int, location: dict[str, Any], timestamp: datetime) -> None:
        """Queue one sample; it is written within `flush_interval` seconds."""
        if len(self._queue) >= self.max_queued:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(sample(parcel_id, driver_id, location, timestamp))
        if len(self._queue) >= BATCH_SIZE:
            self._schedule(0)
        elif self._timer is None:
            self._schedule(self.flush_interval)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> bool:
        """Write everything queued so far, after any flush already under way; False when
        the database could not be reached (what is left is retried on a timer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH_SIZE, len(self._queue)))]
                self._in_flight = len(batch)
                try:
                    done = await self._write(batch)
                finally:
                    self._in_flight = 0
                if not done:
                    self._queue.extendleft(reversed(batch))
                    while len(self._queue) > self.max_queued:
                        self._queue.popleft()
                        self.dropped += 1
                    self._schedule(self.retry_interval)
                    return False
        return True

    async def drain(self, within: float) -> bool:
        """Flush until nothing is queued or `within` seconds pass (shutdown); True if all went."""
        deadline = time.monotonic() + within
        while not await self.flush():
            if time.monotonic() + self.retry_interval > deadline:
                log.error("%d location samples could not be written before shutdown", self.queued)
                return False
            await asyncio.sleep(self.retry_interval)
        return True

    async def _write(self, batch: list[dict[str, Any]]) -> bool:
        """Write one batch; False only when it should be tried again later."""
        try:
            try:
                stored = await store(self.db, batch)
            except InvalidDocument:  # one sample cannot be encoded (a lone surrogate): write the others
                stored = await store(self.db, self._encodable(batch))
        except ConnectionFailure as e:
            self.errors += 1
            log.warning("the database is unreachable; %d samples wait (%s)", self.queued, str(e)[:120])
            return False
        except PyMongoError:
            self.errors += 1
            log.exception("could not write %d location samples", len(batch))
            return True
        self.written += stored
        return True

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
