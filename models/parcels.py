"""Parcels: creation, lookup, paged lists, assignment and the status lifecycle.

Every read and write here has a shape the embedded server serves from an index
(docs/protocol.md, "Query shapes"): writes are `update_one` with their guard in the
filter, then a read by `_id`; a list is a walk down windows of `seq` (a parcel's id,
kept again because a range on `_id` is not served), so each query matches at most
what one page needs, however many parcels are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pymongo
from pymongo.errors import PyMongoError

from models import proofs
from models.access import User, visible_scope
from models.db import Database, find_by_ids, iso, next_window, utcnow

STATUSES = ("pending", "assigned", "picked_up", "in_transit", "delivered", "failed", "cancelled")
FINISHED = frozenset({"delivered", "failed", "cancelled"})
ACTIVE = tuple(s for s in STATUSES if s not in FINISHED)
EN_ROUTE = ("picked_up", "in_transit")  # the parcel is on its way to the destination

# Allowed moves through POST /status (assignment has its own endpoint).
TRANSITIONS: dict[str, frozenset[str]] = {
    "picked_up": frozenset({"assigned"}),
    "in_transit": frozenset({"picked_up"}),
    "delivered": frozenset({"in_transit"}),
    "failed": frozenset({"in_transit"}),
    "cancelled": frozenset({"pending", "assigned", "failed"}),
}
# A driver may be (re)assigned until the parcel is delivered or cancelled; a failed one is
# attempted again by assigning it (docs/protocol.md, "A delivery that fails").
ASSIGNABLE = frozenset({"pending", "assigned", "picked_up", "in_transit", "failed"})
ATTEMPTS = frozenset({"delivered", "failed"})  # the statuses that end a delivery attempt
FAILURE_REASONS = ("nobody_home", "refused", "address_not_found", "damaged", "other")
# Why a delivery failed, as people read it (the pages, the recipient's e-mail), in that order.
FAILURE_LABELS = {
    "nobody_home": "Nobody home", "refused": "Refused by the recipient", "address_not_found": "Address not found",
    "damaged": "Damaged", "other": "Another reason",
}
MAX_FAILURE_NOTE = 500

MAX_PAGE = 500
ROUTE_QUERIES = 8  # drivers whose routes `routes` reads a query each; more: every active parcel at once
ROUTE_FIELDS = {"driver_id": 1, "status": 1, "route_seq": 1, "seq": 1}  # what a place on a route is made of
TAKE_BACK_WITHIN = 5.0  # seconds to delete what a failed import wrote


def route_key(now: datetime, offset: int = 0) -> int:
    """Where a new assignment goes in its driver's route: after every stop there
    (docs/protocol.md, "The route"). A reorder numbers a route 1..n, far below any key
    made here; `offset` keeps the order of several assigned in one step (an import)."""
    return int(now.timestamp() * 1000) * 1000 + offset


class TransitionRefused(ValueError):
    """The parcel is not in a status the requested change can start from."""


class InvalidChange(ValueError):
    """A status change's details (a failure's reason, a route) are not acceptable; `str()` says why."""


def failure(reason: object, note: object) -> dict[str, str]:
    """A failed delivery's reason and note, checked: the one rule for the API and the pages."""
    if reason not in FAILURE_REASONS:
        raise InvalidChange(f"reason must be one of {', '.join(FAILURE_REASONS)}")
    if note is None:
        note = ""
    if not isinstance(note, str) or len(note) > MAX_FAILURE_NOTE:
        raise InvalidChange(f"note must be text of at most {MAX_FAILURE_NOTE} characters")
    return {"reason": reason, "note": note.strip()}


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
        "timeline": [timeline_step(t) for t in doc.get("timeline", ())],
        "attempts": doc.get("attempts", 0),
        "failure": doc.get("failure") and {**doc["failure"], "timestamp": iso(doc["failure"]["timestamp"])},
        "stops_before": doc.get("stops_before") if doc.get("driver_id") is not None and doc["status"] not in FINISHED
        else None,
        "recipient": doc.get("recipient"),
        "note": doc.get("note"),
        "window": doc.get("window") and {end: iso(doc["window"][end]) for end in ("from", "to")},
        "proof": proofs.public(doc.get("proof"), proofs.files_url(doc["_id"])),
    }


def timeline_step(step: Mapping[str, Any]) -> dict[str, Any]:
    """A timeline entry as shown: its status and time, and a failure's reason and note."""
    shown = {"status": step["status"], "timestamp": iso(step["timestamp"])}
    if "reason" in step:
        shown["reason"], shown["note"] = step["reason"], step.get("note", "")
    return shown


def new_parcel(
    parcel_id: int, now: datetime, *, owner_id: int, pickup: dict[str, Any], destination: dict[str, Any],
    recipient: dict[str, Any] | None = None, note: str | None = None, window: dict[str, datetime] | None = None,
    driver_id: int | None = None, route_seq: int | None = None,
) -> dict[str, Any]:
    """A parcel as stored when it is created: pending, or assigned to `driver_id` at `route_seq`
    of their route. The recipient, note and window are checked already (models/intake.py)."""
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
        "recipient": recipient,
        "note": note,
        "window": window,
    }
    if driver_id is not None:
        doc.update(driver_id=driver_id, status="assigned", route_seq=route_seq, next_stop_since=None)
        doc["timeline"].append({"status": "assigned", "timestamp": now})
    return doc


async def create_parcel(
    db: Database, *, owner_id: int, pickup: dict[str, Any], destination: dict[str, Any],
    recipient: dict[str, Any] | None = None, note: str | None = None, window: dict[str, datetime] | None = None,
) -> dict[str, Any]:
    doc = new_parcel(await db.next_id("parcels"), utcnow(), owner_id=owner_id, pickup=pickup,
                     destination=destination, recipient=recipient, note=note, window=window)
    await db.parcels.insert_one(doc)
    return doc


async def create_parcels(db: Database, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Many parcels at once, an import's (docs/protocol.md, "Importing parcels"): their ids
    reserved in one step, one `insert_many`. Each row has `new_parcel`'s keywords; one with a
    `driver_id` is created assigned, its stop after that driver's others, in the rows' order."""
    if not rows:
        return []
    ids = await db.reserve_ids("parcels", len(rows))
    now = utcnow()
    stops: dict[int, int] = {}  # driver id → stops of theirs among the rows so far
    docs = []
    for parcel_id, row in zip(ids, rows, strict=True):
        driver_id = row.get("driver_id")
        route_seq = None
        if driver_id is not None:
            route_seq = route_key(now, stops.get(driver_id, 0))
            stops[driver_id] = stops.get(driver_id, 0) + 1
        docs.append(new_parcel(parcel_id, now, **{**row, "route_seq": route_seq}))
    try:
        await db.parcels.insert_many(docs)
    except PyMongoError:
        await _take_back(db, ids)
        raise
    for driver_id in stops:
        await route_changed(db, driver_id)
    return docs


async def _take_back(db: Database, ids: range) -> None:
    """Delete what a failed `insert_many` wrote before it failed (nothing half-written), on a
    deadline of its own: the request's may be what ran out."""
    async def delete() -> None:
        with pymongo.timeout(TAKE_BACK_WITHIN):
            await db.parcels.delete_many({"seq": {"$gte": ids.start, "$lt": ids.stop}})

    with contextlib.suppress(PyMongoError):
        await asyncio.get_running_loop().create_task(delete(), context=contextvars.Context())


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
    """A driver's parcels that are not finished, in their route's order (docs/protocol.md,
    "The route"): as a dispatcher ordered them, new assignments last."""
    return (await routes(db, [driver_id]))[driver_id]


async def routes(db: Database, driver_ids: Sequence[int],
                 fields: Mapping[str, int] | None = None) -> dict[int, list[dict[str, Any]]]:
    """Several drivers' routes (`active_for_driver`), their parcels whole or only `fields`. A
    `$in` over drivers is not served by the `(driver_id, status, seq)` index, so a few drivers
    are a query each, and more than ROUTE_QUERIES every active parcel (a query per status)."""
    wanted = sorted(set(driver_ids))
    if len(wanted) <= ROUTE_QUERIES:
        found = [doc for driver_id in wanted for doc in await db.parcels.find(
            {"driver_id": driver_id, "status": {"$in": list(ACTIVE)}}, fields).to_list(None)]
    else:
        found = [doc for status in ACTIVE for doc in await db.parcels.find({"status": status}, fields).to_list(None)]
    by_driver: dict[int, list[dict[str, Any]]] = {driver_id: [] for driver_id in wanted}
    for doc in sorted(found, key=lambda doc: (doc.get("route_seq", doc["seq"]), doc["seq"])):
        if doc.get("driver_id") in by_driver:
            by_driver[doc["driver_id"]].append(doc)
    return by_driver


async def set_route(db: Database, driver_id: int, order: Sequence[int]) -> list[dict[str, Any]]:
    """Put a driver's active parcels in this order (exactly those, each once: `InvalidChange`
    otherwise); returns the route as stored."""
    route = await active_for_driver(db, driver_id)
    have = [doc["_id"] for doc in route]
    if len(set(order)) != len(order):
        raise InvalidChange("parcels must name each parcel once")
    if set(order) != set(have):
        missing, extra = sorted(set(have) - set(order)), sorted(set(order) - set(have))
        raise InvalidChange("parcels must be exactly the driver's active parcels"
                            + (f"; missing: {', '.join(map(str, missing[:20]))}" if missing else "")
                            + (f"; not on this route: {', '.join(map(str, extra[:20]))}" if extra else ""))
    # Numbered 1..n, below every key `route_key` makes: what is assigned later goes last.
    for position, parcel_id in enumerate(order, 1):
        await db.parcels.update_one({"_id": parcel_id, "driver_id": driver_id}, {"$set": {"route_seq": position}})
    return await route_changed(db, driver_id)


async def route_changed(db: Database, driver_id: int | None) -> list[dict[str, Any]]:
    """A driver's route after a change to it (an assignment, a stop finished, a reorder), with its
    next stop and each stop's place noted (`mark_route`)."""
    if driver_id is None:
        return []
    route = await active_for_driver(db, driver_id)
    await mark_route(db, route, utcnow())
    return route


async def with_stops_before(db: Database, docs: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Give each active parcel with a driver its `stops_before`: how many of that driver's
    active parcels come before it (`routes` reads them). Returns each driver's number of stops."""
    drivers = {doc["driver_id"] for doc in docs if doc.get("driver_id") is not None and doc["status"] not in FINISHED}
    position: dict[int, int] = {}
    found = await routes(db, sorted(drivers), ROUTE_FIELDS) if drivers else {}
    for route in found.values():
        position.update((doc["_id"], n) for n, doc in enumerate(route))
    for doc in docs:
        if doc["_id"] in position and doc["status"] not in FINISHED:
            doc["stops_before"] = position[doc["_id"]]
    return {driver_id: len(route) for driver_id, route in found.items()}


async def mark_route(db: Database, route: Sequence[dict[str, Any]], now: datetime) -> None:
    """Note on each parcel of a route its place (`stops_before`, kept so that a list of parcels
    needs no route read) and when the first became the driver's next stop (`next_stop_since`;
    a share link shows the truck from then on, models.shares.position_since). Writes only what
    changed; `route` (as `active_for_driver` read it) is updated to match."""
    for n, doc in enumerate(route):
        change: dict[str, Any] = {}
        if doc.get("stops_before") != n:
            change["stops_before"] = n
        if n == 0 and doc.get("next_stop_since") is None:
            change["next_stop_since"] = now
        elif n > 0 and doc.get("next_stop_since") is not None:
            change["next_stop_since"] = None
        if change:
            await db.parcels.update_one({"_id": doc["_id"]}, {"$set": change})
            doc.update(change)


async def stored_stops_before(db: Database, docs: Sequence[dict[str, Any]]) -> None:
    """`stops_before` for a list, as `mark_route` stored it; worked out (`with_stops_before`) only
    for parcels stored before it was kept."""
    legacy = [doc for doc in docs if "stops_before" not in doc and doc.get("driver_id") is not None
              and doc["status"] not in FINISHED]
    if legacy:
        await with_stops_before(db, legacy)


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
        now = utcnow()
        change: dict[str, Any] = {"$set": {"driver_id": driver_id}}
        if before["status"] in ("pending", "failed"):  # a failed parcel: its next attempt
            change["$set"]["status"] = "assigned"
            change["$push"] = {"timeline": {"status": "assigned", "timestamp": now}}
        if before["status"] in ("pending", "failed") or before.get("driver_id") != driver_id:
            change["$set"].update(route_seq=route_key(now), next_stop_since=None,  # last on the new route
                                  stops_before=None)
        result = await db.parcels.update_one(
            {"_id": parcel_id, "status": before["status"], "driver_id": before.get("driver_id")}, change
        )
        if result.matched_count:
            await route_changed(db, driver_id)
            if before.get("driver_id") not in (None, driver_id):
                await route_changed(db, before["driver_id"])
            return await get_parcel(db, parcel_id), before.get("driver_id")
    raise TransitionRefused("the parcel is changing right now; try again")


async def set_status(db: Database, parcel_id: int, status: str,
                     failed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Move a parcel to `status` if its current status allows it (atomically). `failed`
    (models.parcels.failure) is the reason and note of a failed delivery; delivering keeps
    the proof recorded for it (docs/protocol.md, "Proof of delivery")."""
    sources = TRANSITIONS.get(status)
    if sources is None:
        raise TransitionRefused(f"a parcel cannot be moved to {status!r} here")
    if (status == "failed") != (failed is not None):
        raise InvalidChange("a failed delivery needs a reason" if status == "failed" else "only a failure has a reason")
    for _ in range(5):
        now = utcnow()
        step: dict[str, Any] = {"status": status, "timestamp": now, **(failed or {})}
        guard: dict[str, Any] = {"_id": parcel_id, "status": {"$in": sorted(sources)}}
        change: dict[str, Any] = {"$set": {"status": status}, "$push": {"timeline": step}}
        if status in FINISHED:  # off its driver's route
            change["$set"]["stops_before"] = None
        if status in ATTEMPTS:
            change["$inc"] = {"attempts": 1}
        if failed is not None:
            change["$set"]["failure"] = {**failed, "timestamp": now}
        if status == "delivered":
            # The proof recorded for this delivery moves into the parcel; the guard makes sure
            # it is the one read (a proof sent meanwhile replaces it: read and try again).
            before = await get_parcel(db, parcel_id) or {}
            pending = before.get("pending_proof")
            guard["pending_proof"] = pending
            # A proof taken before an attempt that failed is not this delivery's.
            failed_at = max((step["timestamp"] for step in before.get("timeline", ()) if step["status"] == "failed"),
                            default=None)
            current = pending if pending and (failed_at is None or pending["taken_at"] > failed_at) else None
            change["$set"].update(proof=current, pending_proof=None)
        result = await db.parcels.update_one(guard, change)
        if result.matched_count:
            if status in FINISHED:  # it leaves its driver's route: the next one may be the next stop now
                await route_changed(db, (await get_parcel(db, parcel_id) or {}).get("driver_id"))
            return await get_parcel(db, parcel_id)
        doc = await get_parcel(db, parcel_id)
        if doc is None or doc["status"] not in sources:
            was = doc["status"] if doc else "missing"
            raise TransitionRefused(f"a parcel that is {was} cannot become {status}")
    raise TransitionRefused("the parcel is changing right now; try again")


async def set_recipient(db: Database, parcel_id: int, recipient: dict[str, Any] | None,
                        statuses: Sequence[str] | None = None) -> dict[str, Any]:
    """Change a parcel's recipient (checked already: models/intake.py), while its status is one of
    `statuses` (None: any; docs/protocol.md, "The recipient"); TransitionRefused once it is not."""
    guard: dict[str, Any] = {"_id": parcel_id}
    if statuses is not None:
        guard["status"] = {"$in": list(statuses)}
    result = await db.parcels.update_one(guard, {"$set": {"recipient": recipient}})
    doc = await get_parcel(db, parcel_id)
    if not result.matched_count or doc is None:
        was = doc["status"].replace("_", " ") if doc else "missing"
        raise TransitionRefused(f"the parcel is {was}: its recipient can no longer be changed but by a dispatcher")
    return doc
