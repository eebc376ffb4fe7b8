"""Sampled locations: the history a parcel keeps, and its `last_location`.

Writes go through `SampleWriter`, which batches them on a short timer: the live
broadcast never waits for the database, and under load many samples cost one
`insert_many` and one `bulk_write` instead of two awaited writes each.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from models.db import Database, iso

log = logging.getLogger("parcel.locations")

BATCH_SIZE = 100


async def history(db: Database, parcel_id: int) -> list[dict[str, Any]]:
    """The sampled history of a parcel, oldest first."""
    cursor = db.locations.find({"parcel_id": parcel_id}).sort([("timestamp", 1), ("_id", 1)])
    return [
        {"lat": d["lat"], "lng": d["lng"], "address": d.get("address", ""), "timestamp": iso(d["timestamp"])}
        async for d in cursor
    ]


class SampleWriter:
    """Queues samples and writes them in batches, off the broadcast's path."""

    def __init__(self, db: Database, flush_interval: float) -> None:
        self.db = db
        self.flush_interval = flush_interval
        self._queue: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def add(self, parcel_id: int, driver_id: int, location: dict[str, Any], timestamp: datetime) -> None:
        """Queue one sample; it is written within `flush_interval` seconds."""
        self._queue.append({"parcel_id": parcel_id, "driver_id": driver_id, "timestamp": timestamp, **location})
        if len(self._queue) >= BATCH_SIZE:
            self._schedule(0)
        elif self._timer is None:
            self._schedule(self.flush_interval)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._flush_soon)

    def _flush_soon(self) -> None:
        task = asyncio.ensure_future(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Write everything queued so far, after any flush already under way."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            while self._queue:
                batch, self._queue = self._queue[:BATCH_SIZE], self._queue[BATCH_SIZE:]
                await self._write(batch)

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        latest: dict[int, dict[str, Any]] = {}
        for sample in batch:
            latest[sample["parcel_id"]] = sample
        try:
            await self.db.locations.insert_many([dict(s) for s in batch], ordered=False)
            await self.db.parcels.bulk_write(
                [
                    UpdateOne(
                        # never let an older sample overwrite a newer last_location
                        {"_id": pid, "$or": [
                            {"last_location": None}, {"last_location.timestamp": {"$lte": s["timestamp"]}},
                        ]},
                        {"$set": {"last_location": {
                            "lat": s["lat"], "lng": s["lng"], "address": s.get("address", ""),
                            "timestamp": s["timestamp"], "driver_id": s["driver_id"],
                        }}},
                    )
                    for pid, s in latest.items()
                ],
                ordered=False,
            )
        except Exception:  # refused by the database, or not encodable for it (a lone surrogate in an address)
            # The live broadcast has already gone out; the history misses these samples.
            log.exception("could not write %d location samples", len(batch))
