"""Parcels: creation, lookup, listing, assignment and the status lifecycle."""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument

from models.access import User, visible_query
from models.db import Database, iso, utcnow

STATUSES = ("pending", "assigned", "picked_up", "in_transit", "delivered", "cancelled")
FINISHED = frozenset({"delivered", "cancelled"})

# Allowed moves through POST /status (assignment has its own endpoint).
TRANSITIONS: dict[str, frozenset[str]] = {
    "picked_up": frozenset({"assigned"}),
    "in_transit": frozenset({"picked_up"}),
    "delivered": frozenset({"in_transit"}),
    "cancelled": frozenset({"pending", "assigned"}),
}
# A driver may be (re)assigned until the parcel is finished.
ASSIGNABLE = frozenset({"pending", "assigned", "picked_up", "in_transit"})


class TransitionRefused(ValueError):
    """The parcel is not in a status the requested change can start from."""


def public(doc: dict[str, Any]) -> dict[str, Any]:
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
    }


async def create_parcel(
    db: Database, *, owner_id: int, pickup: dict[str, Any], destination: dict[str, Any]
) -> dict[str, Any]:
    doc = {
        "_id": await db.next_id("parcels"),
        "owner_id": owner_id,
        "driver_id": None,
        "status": "pending",
        "pickup": pickup,
        "destination": destination,
        "last_location": None,
        "created_at": utcnow(),
    }
    await db.parcels.insert_one(doc)
    return doc


async def get_parcel(db: Database, parcel_id: int) -> dict[str, Any] | None:
    return await db.parcels.find_one({"_id": parcel_id})


async def list_visible(db: Database, user: User) -> list[dict[str, Any]]:
    query = visible_query(user)
    if query is None:
        return []
    return await db.parcels.find(query).sort("_id", -1).to_list(None)


async def assign_driver(db: Database, parcel_id: int, driver_id: int) -> tuple[dict[str, Any], int | None]:
    """Assign a driver; returns the updated parcel and the previous driver's id."""
    before = await db.parcels.find_one_and_update(
        {"_id": parcel_id, "status": {"$in": list(ASSIGNABLE)}},
        [{"$set": {
            "driver_id": driver_id,
            "status": {"$cond": [{"$eq": ["$status", "pending"]}, "assigned", "$status"]},
        }}],
        return_document=ReturnDocument.BEFORE,
    )
    if before is None:
        raise TransitionRefused("a delivered or cancelled parcel cannot be assigned")
    after = await get_parcel(db, parcel_id)
    return after, before.get("driver_id")


async def set_status(db: Database, parcel_id: int, status: str) -> dict[str, Any]:
    """Move a parcel to `status` if its current status allows it (atomically)."""
    sources = TRANSITIONS.get(status)
    if sources is None:
        raise TransitionRefused(f"a parcel cannot be moved to {status!r} here")
    doc = await db.parcels.find_one_and_update(
        {"_id": parcel_id, "status": {"$in": list(sources)}},
        {"$set": {"status": status}},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        current = await get_parcel(db, parcel_id)
        was = current["status"] if current else "missing"
        raise TransitionRefused(f"a parcel that is {was} cannot become {status}")
    return doc
