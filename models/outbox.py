"""The durable outbox: what must be sent outside (an e-mail, a webhook), kept in MongoDB
until it is sent (docs/protocol.md, "The outbox").

`enqueue` stores an entry under a key its caller makes from the happening itself
(`email:<parcel>:<attempt>:<kind>`), so the same happening queued twice, by two
processes or after a restart, is stored once. Each process's `Outbox` sends what is due:
it claims one entry at a time by moving its `due_at` a lease ahead and naming the claim
(`claimed_by`) in one guarded write (`claim`), so no two processes send the same entry at
once, and one that dies mid-send leaves it to be claimed again once the lease has run
out. Each claimed entry is sent in a task of its own, within `SEND_TIMEOUT`, so one slow
or dead endpoint holds up no other. A failure is tried again after an exponential backoff
until `GIVE_UP_AFTER` from the entry's creation, then the entry is given up
(`parcel_outbox_given_up_total{kind}`). An entry queued `after` another waits while that
one is pending (a recipient's e-mails arrive in the order they were queued).

A sender is a coroutine `send(payload)` registered per kind; any exception is a failure
(its `str()` is recorded), except `Dropped`: nothing is to be sent any more (an address
that unsubscribed), stored as such and not tried again.

Delivery is at least once: an entry whose send succeeded but whose "sent" could not be
written (the database away for longer than the lease) is sent again. The lease is six
times the send timeout, so a live process never loses its claim to a slow send.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pymongo
from pymongo.errors import DuplicateKeyError

from models.db import Database, unreachable, utcnow

if TYPE_CHECKING:
    from realtime.metrics import Metrics

log = logging.getLogger("parcel.outbox")

KINDS = ("email", "webhook")
GIVE_UP_AFTER = timedelta(hours=24)  # from the entry's creation (docs/protocol.md, "The outbox")
SEND_TIMEOUT = 10.0  # seconds one send may take; past it, it failed
LEASE = 60.0  # seconds a claim holds an entry: more than any send takes
BACKOFF = 10.0  # seconds before the first retry; doubled after each failure ...
MAX_BACKOFF = 3600.0  # ... up to an hour
POLL_EVERY = 5.0  # seconds between two looks for entries due (another process's, a retry, after a restart)
MAX_SENDING = 50  # entries being sent at once by one process
CLAIM_FROM = 10  # entries due read at once by a claim (another process may claim some of them first)
HOLD = 1.0  # seconds an entry waits when the one it comes after is being sent
DEADLINE = 5.0  # seconds each of the outbox's own database calls may take
MAX_ERROR = 500  # characters of a failure's text kept

Send = Callable[[dict[str, Any]], Awaitable[None]]
NOT_RECORDED: Any = object()  # `Outbox._record`: the outcome could not be written


class Dropped(Exception):
    """Raised by a sender: there is nothing to send any more (its `str()` says why); not retried."""


async def enqueue(db: Database, key: str, kind: str, payload: dict[str, Any], now: datetime | None = None,
                  after: str | None = None) -> bool:
    """Queue `payload` to be sent by the sender of `kind`, once per `key`; False when that
    key was queued before (by this process or another, now or before a restart). `after`:
    the key of an entry to send first (it is not sent while that one is pending)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    now = now or utcnow()
    entry = {"_id": key, "kind": kind, "payload": payload, "state": "pending", "due_at": now, "attempts": 0,
             "created_at": now, "give_up_at": now + GIVE_UP_AFTER}
    if after is not None:
        entry["after"] = after
    try:
        await db.outbox.insert_one(entry)
    except DuplicateKeyError:
        return False
    return True


async def get_entry(db: Database, key: str) -> dict[str, Any] | None:
    """The entry queued under `key`, whatever its state."""
    return await db.outbox.find_one({"_id": key})


async def claim(db: Database, kinds: list[str], claimed_by: str, now: datetime, lease: float) -> dict[str, Any] | None:
    """The pending entry of one of `kinds` due longest ago, claimed for `lease` seconds (its
    `due_at` moved on, so no other claim takes it meanwhile), or None when none is due.

    Not `find_one_and_update`: the embedded server scans the collection for it whatever
    the filter (400 ms at 20,000 entries, measured), so an indexed read of the first few
    due, then a compare-and-set on each in turn (`update_one` guarded by the `due_at` read:
    one claim wins, another claim moves on to the next)."""
    due = db.outbox.find({"state": "pending", "due_at": {"$lte": now}, "kind": {"$in": kinds}})
    lease_end = now + timedelta(milliseconds=round(lease * 1000))  # BSON keeps milliseconds: the guards compare it
    for entry in await due.sort("due_at", pymongo.ASCENDING).limit(CLAIM_FROM).to_list(None):
        won = await db.outbox.update_one({"_id": entry["_id"], "state": "pending", "due_at": entry["due_at"]},
                                         {"$set": {"due_at": lease_end, "claimed_by": claimed_by}})
        if won.modified_count:
            return {**entry, "due_at": lease_end, "claimed_by": claimed_by}
    return None


async def mark_sent(db: Database, entry: dict[str, Any], now: datetime) -> bool:
    """A claimed entry was sent; False if the claim had been lost meanwhile."""
    result = await db.outbox.update_one(_claimed(entry), {"$set": {"state": "sent", "sent_at": now}})
    return bool(result.modified_count)


async def mark_failed(db: Database, entry: dict[str, Any], error: str, now: datetime, backoff: float,
                      max_backoff: float = MAX_BACKOFF) -> datetime | None:
    """A claimed entry's send failed: it is due again after the backoff (returned), or, past
    its `give_up_at`, given up (None)."""
    attempts = entry["attempts"] + 1
    change: dict[str, Any] = {"attempts": attempts, "last_error": error[:MAX_ERROR], "failed_at": now}
    due = None
    if now >= entry["give_up_at"]:
        change["state"] = "failed"
    else:
        due = min(now + timedelta(seconds=min(backoff * 2 ** (attempts - 1), max_backoff)), entry["give_up_at"])
        change["due_at"] = due
    await db.outbox.update_one(_claimed(entry), {"$set": change})
    return due


async def postpone(db: Database, entry: dict[str, Any], due: datetime) -> None:
    """A claimed entry waits for the one it comes `after`: due again at `due`, no attempt counted."""
    await db.outbox.update_one(_claimed(entry), {"$set": {"due_at": due}})


async def mark_dropped(db: Database, entry: dict[str, Any], reason: str, now: datetime) -> None:
    """A claimed entry has nothing to send any more (`Dropped`)."""
    await db.outbox.update_one(_claimed(entry), {"$set": {"state": "dropped", "last_error": reason[:MAX_ERROR],
                                                          "dropped_at": now}})


def _claimed(entry: dict[str, Any]) -> dict[str, Any]:
    """The filter that finds an entry only while the claim that returned it still holds."""
    return {"_id": entry["_id"], "state": "pending", "claimed_by": entry["claimed_by"], "due_at": entry["due_at"]}


class Outbox:
    """One process's sender of the outbox (the module's docstring): `register` a sender per
    kind, `start`, `wake` after queueing, `stop` at shutdown."""

    def __init__(self, db: Database, metrics: Metrics, *, backoff: float = BACKOFF, poll_every: float = POLL_EVERY,
                 lease: float = LEASE, send_timeout: float = SEND_TIMEOUT) -> None:
        self.db = db
        self.metrics = metrics
        self.backoff = backoff
        self.poll_every = poll_every
        self.lease = lease
        self.send_timeout = send_timeout
        self.process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._claims = 0
        self._senders: dict[str, Send] = {}
        self._woken = asyncio.Event()
        self._loop: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self._stopping = False

    def register(self, kind: str, send: Send) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        self._senders[kind] = send

    def wake(self) -> None:
        """Something was just queued: look now rather than at the next poll."""
        self._woken.set()

    async def start(self) -> None:
        self._stopping = False
        self._loop = asyncio.ensure_future(self._run())

    async def stop(self, within: float) -> None:
        """Stop claiming; the sends under way get `within` seconds, then are cancelled (their
        entries are claimed again once the lease runs out)."""
        self._stopping = True
        self._woken.set()
        tasks = [t for t in (self._loop, *self._sending) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=within)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None

    async def _run(self) -> None:
        while not self._stopping:
            self._woken.clear()
            try:
                await self._claim_due()
            except Exception as e:
                if unreachable(e):
                    log.warning("could not look for e-mails and webhooks to send: %s", str(e)[:120])
                else:
                    log.exception("could not look for e-mails and webhooks to send")
            try:
                await asyncio.wait_for(self._woken.wait(), self.poll_every)
            except TimeoutError:
                pass

    async def _claim_due(self) -> None:
        """Claim and start sending every entry due, up to MAX_SENDING at once."""
        kinds = sorted(self._senders)
        while kinds and not self._stopping and len(self._sending) < MAX_SENDING:
            self._claims += 1
            with pymongo.timeout(DEADLINE):
                entry = await claim(self.db, kinds, f"{self.process}#{self._claims}", utcnow(), self.lease)
            if entry is None:
                return
            task = asyncio.ensure_future(self._send(entry))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        self._sending.discard(task)
        if len(self._sending) == MAX_SENDING - 1:  # there is room again
            self.wake()

    async def _send(self, entry: dict[str, Any]) -> None:
        kind = entry["kind"]
        if entry.get("after") and await self._waits(entry):
            return
        try:
            await asyncio.wait_for(self._senders[kind](entry["payload"]), self.send_timeout)
        except Dropped as e:
            await self._record(mark_dropped(self.db, entry, str(e), utcnow()), entry)
        except Exception as e:
            error = f"no answer within {self.send_timeout:g} s" if isinstance(e, TimeoutError) else \
                str(e) or type(e).__name__
            await self._failed(entry, error)
        else:
            self.metrics.outbox_sent.labels(kind).inc()
            if await self._record(mark_sent(self.db, entry, utcnow()), entry) is False:
                log.warning("sent %s %s, but its claim had run out: it may be sent again", kind, entry["_id"])

    async def _waits(self, entry: dict[str, Any]) -> bool:
        """Is the entry it comes after still pending? Then it is postponed: by HOLD while that
        one is on its first try (being sent now, most likely), else until that one's next try."""
        try:
            with pymongo.timeout(DEADLINE):
                before = await get_entry(self.db, entry["after"])
        except Exception as e:
            before = None
            log.warning("could not read the entry %s comes after: %s", entry["_id"], str(e)[:120])
        if before is None or before["state"] != "pending":
            return False
        now = utcnow()
        wait = HOLD if not before["attempts"] else max(HOLD, (before["due_at"] - now).total_seconds())
        await self._record(postpone(self.db, entry, now + timedelta(seconds=wait)), entry)
        asyncio.get_running_loop().call_later(wait, self.wake)
        return True

    async def _failed(self, entry: dict[str, Any], error: str) -> None:
        kind = entry["kind"]
        due = await self._record(mark_failed(self.db, entry, error, utcnow(), self.backoff), entry)
        if due is None:
            self.metrics.outbox_given_up.labels(kind).inc()
            log.warning("gave up sending %s %s: %s", kind, entry["_id"], error[:200])
        elif isinstance(due, datetime):
            self.metrics.outbox_failures.labels(kind).inc()
            log.info("could not send %s %s (trying again at %s): %s", kind, entry["_id"],
                     due.strftime("%H:%M:%S"), error[:200])
            delay = (due - utcnow()).total_seconds()
            asyncio.get_running_loop().call_later(max(0.0, delay), self.wake)

    async def _record(self, outcome: Awaitable[Any], entry: dict[str, Any]) -> Any:
        """Write a send's outcome (what the write returns; NOT_RECORDED if the database did not
        take it: the entry is then claimed again once its lease runs out)."""
        try:
            with pymongo.timeout(DEADLINE):
                return await outcome
        except Exception as e:
            if not unreachable(e):
                log.exception("could not record the outcome of sending %s %s", entry["kind"], entry["_id"])
            else:
                log.warning("could not record the outcome of sending %s %s: %s", entry["kind"], entry["_id"],
                            str(e)[:120])
            return NOT_RECORDED
