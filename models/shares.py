"""Share links: storing and finding one, how long it lives, whether it still lets its
holder watch, what of the driver's position it shows, and revoking them all
(docs/protocol.md, "Share links").

A link is an opaque random token (auth/tokens.py makes it) stored in `share_links`
under the token itself, naming a parcel and the parcel's share version when it was
made. (A signed `share` token names the same two things, and still works until it
expires.) Revoking moves the parcel's version on, so every link made before stops
working at once. A link lives `SHARE_LINK_TTL` seconds, and at most until
`FINISHED_GRACE` after the parcel was delivered or cancelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from models.db import Database, find_by_ids, iso
from models.parcels import FINISHED, get_parcel

FINISHED_GRACE = timedelta(hours=1)
GONE = "this link is no longer valid"
NOT_LIVE = "the parcel is {status}; this link no longer shows it live"


# A link shows the driver's position only while its parcel is in one of these statuses
# and the driver's next stop (`position_since`).
POSITION_STATUSES = ("in_transit",)
NO_POSITION_YET = "The driver's position is shown here once your parcel is on its way and the driver's next stop."


def version(parcel: Mapping[str, Any]) -> int:
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


async def store(db: Database, token: str, parcel: Mapping[str, Any], expires_at: datetime, now: datetime) -> None:
    """Keep a new link: its token (the document's `_id`), its parcel and the parcel's share version."""
    await db.share_links.insert_one({"_id": token, "parcel_id": parcel["_id"], "version": version(parcel),
                                     "expires_at": expires_at, "created_at": now})


async def get_link(db: Database, token: str) -> dict[str, Any] | None:
    """The stored link of this token, expired or not."""
    return await db.share_links.find_one({"_id": token})


async def get_links(db: Database, tokens: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Stored links by token (the socket handshakes' batched read, models/lookups.py)."""
    return await find_by_ids(db.share_links, tokens)


def names(link: Mapping[str, Any] | None, now: datetime) -> tuple[int, int] | None:
    """The (parcel id, share version) a stored link names, until it expires."""
    if link is None or link["expires_at"] <= now:
        return None
    return link["parcel_id"], link["version"]


def position_since(parcel: Mapping[str, Any], now: datetime) -> datetime | None:
    """From when a link shows the driver's position: the moment its parcel last went
    `in_transit` and was the driver's next stop, while it is both (now, if the timeline does
    not say when); None while the link shows no position at all, neither live nor as
    history. The one place this rule lives: the page, the history, the socket's snapshot
    and its live frames all ask it. (A parcel stored before routes existed has no
    `next_stop_since` at all: in transit is enough for it.)"""
    if parcel["status"] not in POSITION_STATUSES:
        return None
    moments = [step["timestamp"] for step in parcel.get("timeline", ()) if step["status"] == parcel["status"]]
    since = moments[-1] if moments and moments[-1] is not None else now
    if "next_stop_since" in parcel:  # on a route (docs/protocol.md, "The route")
        first = parcel["next_stop_since"]
        return None if first is None else max(since, first)
    return since


def position_since_text(parcel: Mapping[str, Any], now: datetime) -> str | None:
    """`position_since` as the ISO text that broadcasts carry (comparable with their `timestamp`)."""
    return iso(position_since(parcel, now))


def may_show(since: str | None, timestamp: str | None) -> bool:
    """May a link show a position of this time (ISO text), given `position_since_text`?"""
    return since is not None and timestamp is not None and timestamp >= since


async def prune(db: Database, now: datetime) -> int:
    """Delete the links that have expired; returns how many went."""
    return (await db.share_links.delete_many({"expires_at": {"$lt": now}})).deleted_count
