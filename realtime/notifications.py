"""What the recipient is told by e-mail, and when (docs/protocol.md, "E-mail to the
recipient"): a listener of the parcels' events (realtime/events.py) that queues each
e-mail in the outbox (models/outbox.py), which sends it.

Per parcel and delivery attempt, at most once each: "out for delivery" when it goes
`in_transit` (with a new share link), "arriving soon" when the hub tells it is close,
"delivered" or "not delivered" when the attempt ends. The outbox key
`email:<parcel>:<attempt>:<kind>` makes the second telling of the same thing (two
processes noticing one change, a restart) queue nothing. The attempt is the number of
attempts that had ended before the change (the timeline's `delivered` and `failed`
steps), so a failed delivery attempted again is told again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pymongo

from auth import tokens
from models import mail, outbox, parcels, shares
from models.db import Database, utcnow
from models.outbox import Outbox
from realtime.events import Event
from settings import Settings

DEADLINE = 5.0  # seconds the database calls of one event's e-mail may take together
TOLD_AT_STATUS = {"in_transit": "out_for_delivery", "delivered": "delivered", "failed": "not_delivered"}
# What is told before each notification of an attempt: it is sent after the latest of these queued.
EARLIER = {"out_for_delivery": (), "arriving": ("out_for_delivery",),
           "delivered": ("out_for_delivery", "arriving"), "not_delivered": ("out_for_delivery", "arriving")}


def what_to_tell(event: Event, parcel: dict[str, Any]) -> tuple[str, int, dict[str, Any]] | None:
    """The notification an event makes for this parcel (read after the event, told as it was
    then): its kind, the delivery attempt it belongs to, and the timeline step it tells of;
    None for nothing."""
    timeline = parcel.get("timeline", [])
    if event.type == "parcel.arriving":  # told of the parcel as it was then, whatever happened since
        then = [s for s in timeline if s["timestamp"] is not None and s["timestamp"] <= event.timestamp]
        if not then or then[-1]["status"] != "in_transit":
            return None
        return "arriving", sum(1 for s in then if s["status"] in parcels.ATTEMPTS), then[-1]
    if event.type != "parcel.status_changed" or not 0 < event.step <= len(timeline):
        return None
    step = timeline[event.step - 1]  # the change this event tells of, whatever came after it
    kind = TOLD_AT_STATUS.get(step["status"])
    if kind is None:
        return None
    ended = sum(1 for s in timeline[:event.step - 1] if s["status"] in parcels.ATTEMPTS)
    return kind, ended, step


def place(point: dict[str, Any]) -> str:
    """A pickup or destination as an e-mail names it: its address, else its coordinates."""
    return point.get("address") or f"{point['lat']:.4f}, {point['lng']:.4f}"


class Notifications:
    """The listener (`app.events.listen(notifications)`); `base_url` starts the e-mails'
    links (PUBLIC_URL, or the address the server listens on)."""

    def __init__(self, db: Database, config: Settings, sender: Outbox) -> None:
        self.db = db
        self.config = config
        self.outbox = sender
        self.base_url = config.public_url
        self._turns: dict[int, tuple[asyncio.Lock, int]] = {}  # a parcel's events, one at a time: its lock, users

    async def __call__(self, event: Event) -> None:
        # realtime/events.py runs this in a context of its own: no request's deadline, DEADLINE's below.
        await self.tell(event)

    async def tell(self, event: Event) -> None:
        """Queue the e-mail this event makes, if any (and if it was not queued before). One
        parcel's events are recorded one at a time, in the order they were told, so its
        e-mails are queued in that order too."""
        lock, users = self._turns.get(event.parcel_id) or (asyncio.Lock(), 0)
        self._turns[event.parcel_id] = (lock, users + 1)
        try:
            async with lock:
                await self._tell(event)
        finally:
            lock, users = self._turns[event.parcel_id]
            if users == 1:
                del self._turns[event.parcel_id]
            else:
                self._turns[event.parcel_id] = (lock, users - 1)

    async def _tell(self, event: Event) -> None:
        with pymongo.timeout(DEADLINE):
            parcel = await parcels.get_parcel(self.db, event.parcel_id)
            email = ((parcel or {}).get("recipient") or {}).get("email")
            told = what_to_tell(event, parcel) if email else None
            if told is None:
                return
            kind, attempt, step = told
            key = f"email:{parcel['_id']}:{attempt}:{kind}"
            if await outbox.get_entry(self.db, key) is not None:
                return  # told already (by another process, or before a restart)
            recipient = await mail.address(self.db, email)
            if recipient["unsubscribed_at"] is not None:
                return
            after = None  # sent after the latest e-mail of this attempt queued before it
            for earlier in EARLIER[kind]:
                if await outbox.get_entry(self.db, f"email:{parcel['_id']}:{attempt}:{earlier}") is not None:
                    after = f"email:{parcel['_id']}:{attempt}:{earlier}"
            facts = await self._facts(kind, parcel, step)
            payload = mail.compose(
                kind, to=email, name=parcel["recipient"].get("name") or "", business_name=self.config.business_name,
                sender=self.config.smtp_from, unsubscribe_url=f"{self.base_url}/u/{recipient['token']}",
                parcel_id=parcel["_id"], destination=place(parcel["destination"]), **facts)
            if await outbox.enqueue(self.db, key, "email", payload, after=after):
                self.outbox.wake()

    async def _facts(self, kind: str, parcel: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        """What this notification's templates say beyond the common part."""
        if kind == "out_for_delivery":
            return {"share_url": await self._share_link(parcel)}
        if kind == "arriving":
            return {"minutes": self.config.notify_arriving_minutes}
        if kind == "delivered":
            proof = parcel.get("proof") or {}
            return {"delivered_at": mail.moment_text(step["timestamp"]), "received_by": proof.get("received_by") or ""}
        return {"failed_at": mail.moment_text(step["timestamp"]),
                "reason": parcels.FAILURE_LABELS.get(step.get("reason", ""), parcels.FAILURE_LABELS["other"])}

    async def _share_link(self, parcel: dict[str, Any]) -> str:
        """A new share link for the recipient: it lives until an hour after the parcel finishes
        (or SHARE_LINK_TTL, if that comes first: docs/protocol.md, "Share links")."""
        now = utcnow()
        expires = shares.expiry(parcel, now, self.config.share_link_ttl)
        if expires is None:
            return ""
        token = tokens.new_share_token()
        await shares.store(self.db, token, parcel, expires, now)
        return f"{self.base_url}/t/{token}"
