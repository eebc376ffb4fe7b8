"""Share links: how long one lives, whether it still lets its holder watch, and revoking
them all (docs/protocol.md, "Share links").

A link is a `share` token (auth/tokens.py) naming a parcel and the parcel's share
version. Revoking moves the version on, so every link issued before stops working at
once without a list of links to keep. A link lives `SHARE_LINK_TTL` seconds, and at
most until `FINISHED_GRACE` after the parcel was delivered or cancelled.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from models.db import Database
from models.parcels import FINISHED, get_parcel

FINISHED_GRACE = timedelta(hours=1)
GONE = "this link is no longer valid"
NOT_LIVE = "the parcel is {status}; this link no longer shows it live"


def version(parcel: dict[str, Any]) -> int:
    return parcel.get("share_version", 0)


def finished_at(parcel: dict[str, Any]) -> datetime | None:
    """When the parcel was delivered or cancelled (None while it is active)."""
    if parcel["status"] not in FINISHED:
        return None
    moments = [step["timestamp"] for step in parcel.get("timeline", ()) if step["status"] == parcel["status"]]
    return moments[-1] if moments else parcel["created_at"]


def expiry(parcel: dict[str, Any], now: datetime, ttl: int) -> datetime | None:
    """When a link made now would expire; None when the parcel has been finished too long."""
    ends = now + timedelta(seconds=ttl)
    done = finished_at(parcel)
    if done is not None:
        ends = min(ends, done + FINISHED_GRACE)
    return ends if ends > now else None


def still_valid(parcel: dict[str, Any] | None, link_version: int, now: datetime) -> bool:
    """Does a (signed, unexpired) link of `link_version` still show this parcel?"""
    if parcel is None or link_version != version(parcel):
        return False
    done = finished_at(parcel)
    return done is None or now < done + FINISHED_GRACE


async def resolve(db: Database, shared: Any, now: datetime) -> dict[str, Any] | None:
    """The parcel a verified share token (`auth.tokens.Shared`) still shows, if any."""
    parcel = await get_parcel(db, shared.parcel_id)
    return parcel if still_valid(parcel, shared.version, now) else None


async def revoke(db: Database, parcel_id: int) -> None:
    """Every link of the parcel stops working."""
    await db.parcels.update_one({"_id": parcel_id}, {"$inc": {"share_version": 1}})
