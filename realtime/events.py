"""What happens to parcels, told to whoever listens outside the live path (docs/protocol.md,
"Events"): the e-mail to the recipient and the shops' webhooks.

A change is told here once it is stored: `created` by the handlers that create parcels,
`status_changed` by the hub for every status change made in this process (and for one
another process made that this process notices), `arriving` by the hub the first time a
parcel's driver is close. Listeners are coroutines, run in background tasks so that the
answer to the request (or the broadcast) never waits for them; each one records what it
must send durably, under a key of its own making (models/outbox.py), so an event told
twice (two processes noticing the same change) is sent once. A few are recorded at a time
(RECORDING_AT_ONCE): a burst waits in memory rather than at the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from models.db import utcnow

log = logging.getLogger("parcel.events")

CANCELLED_WITHIN = 0.2  # seconds the cancelled listeners get to end at shutdown
RECORDING_AT_ONCE = 4  # listeners running at once: a 5,000-row import's events wait their turn
TYPES = ("parcel.created", "parcel.status_changed", "parcel.delivered", "parcel.failed", "parcel.arriving")


@dataclass(frozen=True)
class Event:
    """`type` (one of TYPES) for parcel `parcel_id`; `step` is the parcel's timeline length at a
    status change (so a change told twice is the same), 0 otherwise."""

    type: str
    parcel_id: int
    timestamp: datetime
    step: int = 0


Listener = Callable[[Event], Awaitable[None]]


class Events:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._tasks: set[asyncio.Task] = set()
        # Events come in bursts (an import creates thousands of parcels at once); recorded a few at a
        # time, they never crowd the database's other work (the import itself, the live path's reads).
        self._turns = asyncio.Semaphore(RECORDING_AT_ONCE)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def created(self, parcel: dict[str, Any]) -> None:
        self._emit(Event("parcel.created", parcel["_id"], utcnow()))

    def status_changed(self, parcel: dict[str, Any]) -> None:
        """A parcel's status changed (a reassignment alone is no event); a delivered or failed
        parcel is also told as such."""
        step, now = len(parcel.get("timeline", ())), utcnow()
        self._emit(Event("parcel.status_changed", parcel["_id"], now, step))
        if parcel["status"] in ("delivered", "failed"):
            self._emit(Event(f"parcel.{parcel['status']}", parcel["_id"], now, step))

    def arriving(self, parcel_id: int) -> None:
        self._emit(Event("parcel.arriving", parcel_id, utcnow()))

    def _emit(self, event: Event) -> None:
        for listener in self._listeners:
            # A context of its own: not the request's database deadline (pymongo.timeout), which
            # would be what is left of it once the answer has gone.
            task = asyncio.get_running_loop().create_task(self._tell(listener, event), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _tell(self, listener: Listener, event: Event) -> None:
        try:
            async with self._turns:
                await listener(event)
        except Exception:
            log.exception("could not record %s of parcel %d", event.type, event.parcel_id)

    async def drain(self, within: float) -> None:
        """Wait (at most `within` seconds) for the events being recorded, before shutting down;
        those still waiting then are cancelled (and end in their own tasks, not when collected)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=within)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        if left:  # bounded: a task that does not end at once is not waited for
            await asyncio.wait(left, timeout=CANCELLED_WITHIN)
