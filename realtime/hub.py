"""The hub: per-parcel subscribers held in the IOLoop, fan-out and sampling.

Handlers hand the hub what they have validated and authorised; the hub
serialises each event once (through `realtime.protocol`), sends the same text to
every subscriber of the parcel, keeps the latest location of each parcel for the
snapshot on connect, and passes every Nth accepted location (and a driver's last
one when their socket closes) to the sample writer, never making the broadcast
wait for it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from models import parcels
from models.access import User
from models.db import Database, utcnow
from models.locations import SampleWriter
from realtime import protocol
from realtime.broker import make_broker
from realtime.metrics import Metrics

SESSION_ENDED = 4401  # the close code of a socket whose user's session ended


class Subscriber(Protocol):
    user: User

    def send_text(self, text: str) -> None: ...

    def revoke(self, message: str, code: int = ...) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


@dataclass(frozen=True)
class ParcelState:
    """What the hub knows of a parcel with subscribers, for every message's check."""

    driver_id: int | None
    status: str
    checked: float  # when it was last read from the database (time.monotonic)

    @property
    def finished(self) -> bool:
        return self.status in parcels.FINISHED


@dataclass(frozen=True)
class Position:
    """A driver's accepted location not yet written to the history."""

    driver_id: int
    location: dict[str, Any]
    timestamp: datetime


class Hub:
    """`state_ttl`: how long the hub trusts its copy of a parcel's driver and status
    before it re-reads it, so that a change made by another process (the CLI) lands."""

    def __init__(self, db: Database, writer: SampleWriter, sample_every: int, broker_url: str = "",
                 state_ttl: float = 5.0, shutdown_timeout: float = 7.0, metrics: Metrics | None = None) -> None:
        self.db = db
        self.metrics = metrics or Metrics()
        self.metrics.watch(self)
        self.writer = writer
        self.sample_every = sample_every
        self.state_ttl = state_ttl
        self.shutdown_timeout = shutdown_timeout
        self.broker = make_broker(broker_url, self._deliver)
        self._subscribers: dict[int, set[Subscriber]] = {}
        self._by_user: dict[int, set[Subscriber]] = {}
        self._states: dict[int, ParcelState] = {}
        self._latest: dict[int, str] = {}  # the latest location_update text of each parcel
        self._accepted: dict[int, int] = {}
        self._unsaved: dict[int, Position] = {}
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.broker.start()

    def close_all(self) -> None:
        """Close every socket as "going away" (1001), so pages reconnect to the next server."""
        for subscribers in list(self._subscribers.values()):
            for subscriber in list(subscribers):
                subscriber.close(1001, "the server is restarting")

    async def stop(self) -> None:
        """Write every driver's unsaved last position, then everything queued."""
        for parcel_id in list(self._unsaved):
            self._save_unsaved(parcel_id)
        await self.writer.drain(self.shutdown_timeout)
        await self.broker.close()

    # -- subscribers -------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, parcel: dict[str, Any]) -> str | None:
        """Add a subscriber; returns the snapshot to send it (the latest location), if any."""
        parcel_id = parcel["_id"]
        self._subscribers.setdefault(parcel_id, set()).add(subscriber)
        self._by_user.setdefault(subscriber.user.id, set()).add(subscriber)
        self._states[parcel_id] = ParcelState(parcel.get("driver_id"), parcel["status"], time.monotonic())
        if parcel_id in self._latest:
            return self._latest[parcel_id]
        last = parcel.get("last_location")
        if not last:
            return None
        location = {"lat": last["lat"], "lng": last["lng"], "address": last.get("address", "")}
        driver_id = last.get("driver_id", parcel.get("driver_id"))
        return protocol.location_update(parcel_id, driver_id, location, last["timestamp"])

    def unsubscribe(self, subscriber: Subscriber, parcel_id: int) -> None:
        mine = self._by_user.get(subscriber.user.id)
        if mine is not None:
            mine.discard(subscriber)
            if not mine:
                del self._by_user[subscriber.user.id]
        subscribers = self._subscribers.get(parcel_id)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._subscribers[parcel_id]
            self._states.pop(parcel_id, None)

    def subscriber_count(self, parcel_id: int) -> int:
        return len(self._subscribers.get(parcel_id, ()))

    def open_sockets(self) -> dict[tuple[str, str], int]:
        """Open subscribers by (kind, role), for /metrics."""
        counts: dict[tuple[str, str], int] = {}
        for subscribers in self._by_user.values():
            for subscriber in subscribers:
                key = (getattr(subscriber, "kind", "tracking"), subscriber.user.role)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def latest_location(self, parcel_id: int) -> str | None:
        """The latest location_update broadcast for a parcel this process has seen, if any."""
        return self._latest.get(parcel_id)

    def parcel_state(self, parcel_id: int) -> ParcelState:
        """The driver and status of a parcel with subscribers.

        Read from memory (this is every message's check); a copy older than
        `state_ttl` is refreshed from the database in the background."""
        state = self._states[parcel_id]
        if time.monotonic() - state.checked > self.state_ttl:
            self._states[parcel_id] = replace(state, checked=time.monotonic())
            task = asyncio.ensure_future(self._refresh(parcel_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return state

    async def _refresh(self, parcel_id: int) -> None:
        parcel = await parcels.get_parcel(self.db, parcel_id)
        state = self._states.get(parcel_id)
        if parcel is None or state is None:
            return
        if (parcel["status"], parcel.get("driver_id")) != (state.status, state.driver_id):
            self.parcel_changed(parcel, previous_driver_id=state.driver_id)

    # -- events in -----------------------------------------------------------

    def publish_location(self, parcel_id: int, driver_id: int, location: dict[str, Any]) -> None:
        """An accepted location: broadcast it, and sample it for the history."""
        position = Position(driver_id, location, utcnow())
        count = self._accepted.get(parcel_id, 0) + 1
        self._accepted[parcel_id] = count
        if count % self.sample_every == 0:
            self._unsaved.pop(parcel_id, None)
            self.writer.add(parcel_id, driver_id, location, position.timestamp)
        else:
            self._unsaved[parcel_id] = position
        self.broker.publish({
            "kind": "location", "parcel_id": parcel_id, "accepted": time.time(),
            "text": protocol.location_update(parcel_id, driver_id, location, position.timestamp),
        })

    def driver_left(self, parcel_id: int, driver_id: int) -> None:
        """A driver's socket closed: their latest accepted update is written too."""
        unsaved = self._unsaved.get(parcel_id)
        if unsaved and unsaved.driver_id == driver_id:
            self._save_unsaved(parcel_id)

    def parcel_changed(self, parcel: dict[str, Any], previous_driver_id: int | None = None) -> None:
        """A parcel's status or driver changed: tell its subscribers, cut off a replaced driver."""
        self.broker.publish({
            "kind": "parcel", "parcel_id": parcel["_id"], "status": parcel["status"],
            "driver_id": parcel.get("driver_id"),
            "revoke_driver_id": previous_driver_id if previous_driver_id != parcel.get("driver_id") else None,
        })

    def sessions_ended(self, user_id: int) -> None:
        """A user logged out, or their password or role changed: close their sockets (4401), in every process."""
        self.broker.publish({"kind": "user", "user_id": user_id})

    def _save_unsaved(self, parcel_id: int) -> None:
        position = self._unsaved.pop(parcel_id)
        self.writer.add(parcel_id, position.driver_id, position.location, position.timestamp)

    # -- events out (from the broker, in every process) -----------------------

    def _deliver(self, event: dict[str, Any]) -> None:
        if event["kind"] == "user":
            return self._end_sessions(event["user_id"])
        parcel_id = event["parcel_id"]
        if event["kind"] == "location":
            self._latest[parcel_id] = event["text"]
            self._send(parcel_id, event["text"])
            self.metrics.broadcast_latency.observe(max(0.0, time.time() - event["accepted"]))
            return
        self._apply_change(parcel_id, event["driver_id"], event["status"])
        if event["revoke_driver_id"] is not None:
            self._revoke_driver(parcel_id, event["revoke_driver_id"])
        self._send(parcel_id, protocol.status(parcel_id, event["status"], utcnow()))

    def _send(self, parcel_id: int, text: str) -> None:
        subscribers = list(self._subscribers.get(parcel_id, ()))
        for subscriber in subscribers:
            subscriber.send_text(text)
        self.metrics.broadcasts_out.inc(len(subscribers))

    def _apply_change(self, parcel_id: int, driver_id: int | None, status: str) -> None:
        """Remember a parcel's new driver and status; once it is finished, save its final
        position and forget its journey."""
        state = self._states.get(parcel_id)
        if state is not None:
            self._states[parcel_id] = replace(state, driver_id=driver_id, status=status)
        if status in parcels.FINISHED:
            if parcel_id in self._unsaved:
                self._save_unsaved(parcel_id)
            self._accepted.pop(parcel_id, None)
            self._latest.pop(parcel_id, None)

    def _end_sessions(self, user_id: int) -> None:
        for subscriber in list(self._by_user.get(user_id, ())):
            for parcel_id in [p for p, subs in self._subscribers.items() if subscriber in subs]:
                self.unsubscribe(subscriber, parcel_id)
            subscriber.revoke("your session has ended; log in again", SESSION_ENDED)

    def _revoke_driver(self, parcel_id: int, driver_id: int) -> None:
        """A replaced driver's sockets are closed (4403); their position is not the parcel's now."""
        self._latest.pop(parcel_id, None)
        for subscriber in list(self._subscribers.get(parcel_id, ())):
            if subscriber.user.role == "driver" and subscriber.user.id == driver_id:
                self.unsubscribe(subscriber, parcel_id)
                subscriber.revoke("you are no longer assigned to this parcel")
