"""Parcels: creation, lookup, paged lists, assignment and the status lifecycle.

Every read and write here has a shape the embedded server serves from an index
(docs/protocol.md, "Query shapes"): writes are `update_one` with their guard in the
filter, then a read by `_id`; a list is a walk down windows of `seq` (a parcel's id,
kept again because a range on `_id` is not served), so each query matches at most
what one page needs, however many parcels are stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models.access import User, visible_scope
from models.db import Database, find_by_ids, iso, next_window, utcnow

STATUSES = ("pending", "assigned", "picked_up", "in_transit", "delivered", "cancelled")
FINISHED = frozenset({"delivered", "cancelled"})
ACTIVE = tuple(s for s in STATUSES if s not in FINISHED)
EN_ROUTE = ("picked_up", "in_transit")  # the parcel is on its way to the destination

# Allowed moves through POST /status (assignment has its own endpoint).
TRANSITIONS: dict[str, frozenset[str]] = {
    "picked_up": frozenset({"assigned"}),
    "in_transit": frozenset({"picked_up"}),
    "delivered": frozenset({"in_transit"}),
    "cancelled": frozenset({"pending", "assigned"}),
}
# A driver may be (re)assigned until the parcel is finished.
ASSIGNABLE = frozenset({"pending", "assigned", "picked_up", "in_transit"})

MAX_PAGE = 500


class TransitionRefused(ValueError):
    """The parcel is not in a status the requested change can start from."""


@dataclass(frozen=True)
class Page:
    """Parcels newest first; `next_before` is the `before=` of the next page (None: this is the last)."""

    parcels: list[dict[str, Any]]
    next_before: int | None


def public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A parcel as the API and the pages show it."""
    last = doc.get("last_location")
    return {
        "id": doc["_id"],
        "owner_id": doc["owner_id"],
        "driver_id": doc.get("driver_id"),
        "status": doc["status"],
        "pickup": doc["pickup"],
        "destination": doc["destination"],
        "last_location": None if not last else {
            "lat": last["lat"], "lng": last["lng"], "address": last.get("address", ""),
            "timestamp": iso(last["timestamp"]),
        },
        "created_at": iso(doc["created_at"]),
        "timeline": [{"status": t["status"], "timestamp": iso(t["timestamp"])} for t in doc.get("timeline", ())],
    }


async def create_parcel(
    db: Database, *, owner_id: int, pickup: dict[str, Any], destination: dict[str, Any]
) -> dict[str, Any]:
    parcel_id = await db.next_id("parcels")
    now = utcnow()
    doc = {
        "_id": parcel_id,
        "seq": parcel_id,
        "owner_id": owner_id,
        "driver_id": None,
        "status": "pending",
        "pickup": pickup,
        "destination": destination,
        "last_location": None,
        "created_at": now,
        "timeline": [{"status": "pending", "timestamp": now}],
    }
    await db.parcels.insert_one(doc)
    return doc


async def get_parcel(db: Database, parcel_id: int) -> dict[str, Any] | None:
    return await db.parcels.find_one({"_id": parcel_id})


async def get_parcels(db: Database, parcel_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The parcels with these ids, by id."""
    return await find_by_ids(db.parcels, parcel_ids)


async def list_visible(
    db: Database, user: User, *, limit: int = 100, before: int | None = None,
    statuses: Sequence[str] | None = None,
) -> Page:
    """A page of the parcels this user may see, newest first, optionally of some statuses only."""
    scope = visible_scope(user)
    if scope is None:
        return Page([], None)
    return await find_page(db, scope, limit=limit, before=before, statuses=statuses)


async def find_page(
    db: Database, scope: Mapping[str, Any], *, limit: int, before: int | None = None,
    statuses: Sequence[str] | None = None,
) -> Page:
    """Parcels matching `scope` (an owner, a driver, or everyone: `{}`), with ids below
    `before`, newest first.

    Walks down windows of ids (`next_window` sizes them) until one more parcel than the
    page holds is found, so we know whether another page follows, or the ids run out.
    Everyone's parcels of some statuses are one query per status, through `(status, seq)`;
    one person's are one query per window, their statuses picked here (a person's
    parcels are few, and dense where a window finds them)."""
    top = await db.last_id("parcels") + 1
    high = top if before is None else min(before, top)
    wanted = limit + 1
    found: list[dict[str, Any]] = []
    size: float = wanted
    while high > 1 and len(found) < wanted:
        low = max(1, high - int(size))
        window = {"$gte": low, "$lt": high}
        if scope or statuses is None:
            matched = await db.parcels.find({**scope, "seq": window}).to_list(None)
            if statuses is not None:
                matched = [doc for doc in matched if doc["status"] in statuses]
        else:
            matched = [doc for status in statuses
                       for doc in await db.parcels.find({"status": status, "seq": window}).to_list(None)]
        found += matched
        size = next_window(high - low, len(matched), wanted - len(found))
        high = low
    found.sort(key=lambda doc: doc["seq"], reverse=True)
    page = found[:limit]
    return Page(page, page[-1]["_id"] if len(found) > limit else None)


@dataclass(frozen=True)
class Cursor:
    """Where the next page of an active-first list starts."""

    finished: bool
    before: int | None


async def active_first(
    db: Database, scope: Mapping[str, Any], *, limit: int, before: int | None = None, finished: bool = False,
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Active parcels newest first, then finished ones newest first (the dispatcher's
    board); `finished` and `before` say where this page starts."""
    rows: list[dict[str, Any]] = []
    if not finished:
        page = await find_page(db, scope, limit=limit, before=before, statuses=ACTIVE)
        if page.next_before is not None:
            return page.parcels, Cursor(False, page.next_before)
        rows, before = page.parcels, None
    room = limit - len(rows)
    page = await find_page(db, scope, limit=max(room, 1), before=before, statuses=sorted(FINISHED))
    if room == 0:
        return rows, Cursor(True, None) if page.parcels else None
    rows += page.parcels
    return rows, Cursor(True, page.next_before) if page.next_before is not None else None


async def active_for_driver(db: Database, driver_id: int) -> list[dict[str, Any]]:
    """A driver's parcels that are not finished, oldest first (their route's order)."""
    found = await db.parcels.find({"driver_id": driver_id, "status": {"$in": list(ACTIVE)}}).to_list(None)
    return sorted(found, key=lambda doc: doc["seq"])


async def all_active(db: Database) -> list[dict[str, Any]]:
    """Every parcel not finished, oldest first (the dispatcher's board): one query per status."""
    found = [doc for status in ACTIVE for doc in await db.parcels.find({"status": status}).to_list(None)]
    return sorted(found, key=lambda doc: doc["seq"])


async def assign_driver(db: Database, parcel_id: int, driver_id: int) -> tuple[dict[str, Any], int | None]:
    """Assign a driver; returns the updated parcel and the previous driver's id.

    The write is guarded by what was read (status and driver), so a concurrent change
    is never overwritten: the read and the write are tried again instead."""
    for _ in range(5):
        before = await get_parcel(db, parcel_id)
        if before is None or before["status"] not in ASSIGNABLE:
            raise TransitionRefused("a delivered or cancelled parcel cannot be assigned")
        change: dict[str, Any] = {"$set": {"driver_id": driver_id}}
        if before["status"] == "pending":
            change["$set"]["status"] = "assigned"
            change["$push"] = {"timeline": {"status": "assigned", "timestamp": utcnow()}}
        result = await db.parcels.update_one(
            {"_id": parcel_id, "status": before["status"], "driver_id": before.get("driver_id")}, change
        )
        if result.matched_count:
            return await get_parcel(db, parcel_id), before.get("driver_id")
    raise TransitionRefused("the parcel is changing right now; try again")


async def set_status(db: Database, parcel_id: int, status: str) -> dict[str, Any]:
    """Move a parcel to `status` if its current status allows it (atomically)."""
    sources = TRANSITIONS.get(status)
    if sources is None:
        raise TransitionRefused(f"a parcel cannot be moved to {status!r} here")
    result = await db.parcels.update_one(
        {"_id": parcel_id, "status": {"$in": sorted(sources)}},
        {"$set": {"status": status}, "$push": {"timeline": {"status": status, "timestamp": utcnow()}}},
    )
    doc = await get_parcel(db, parcel_id)
    if not result.matched_count:
        was = doc["status"] if doc else "missing"
        raise TransitionRefused(f"a parcel that is {was} cannot become {status}")
    return doc
