"""The parcel's tracking WebSocket (docs/protocol.md, "The tracking socket"): its driver
sends, its owner, dispatchers and share-link viewers watch. What every socket shares is
in handlers/sockets.py.
"""

from __future__ import annotations

import re
from typing import Any

from auth import tokens
from handlers.sockets import CLOSE_BAD_REQUEST, CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED, Socket
from models import parcels, shares
from models.access import User, can_view, link_viewer, location_refusal
from models.db import parse_id, utcnow
from realtime import protocol
from realtime.hub import ParcelState

NOT_ALLOWED = "this parcel does not exist or you may not track it"


class TrackingSocket(Socket):
    """One parcel's socket: its driver sends, its owner, dispatchers and share-link viewers watch."""

    __slots__ = ()
    kind = "tracking"

    async def handshake(self) -> None:
        raw_id = self._argument("parcel_id")
        if not re.fullmatch(r"-?[0-9]+", raw_id):
            self._refuse(CLOSE_BAD_REQUEST, "parcel_id must be an integer")
        parcel_id = parse_id(raw_id)  # any other integer names no parcel
        claimed = self.credentials()
        known = None
        if isinstance(claimed, tokens.ShortShare):
            claimed = await self.look_up(claimed)
        if isinstance(claimed, tokens.Shared):
            user, parcel = await self.link(claimed, parcel_id)
        else:
            user = await self.authenticate(claimed)
            # No database read when the hub holds the parcel. Looked up after the await, so the
            # state cannot change (a status, the last subscriber leaving) before subscribe().
            known = self.hub.known(parcel_id) if parcel_id else None
            if known is not None:
                parcel = known.parcel()
            else:
                parcel = await self.read(self.application.lookups.parcel(parcel_id)) if parcel_id else None
        if self.closing():
            return
        if parcel is None or not can_view(user, parcel):
            self._refuse(CLOSE_FORBIDDEN, NOT_ALLOWED)
        since, epoch = self.last_seen()
        self.count_in(user)
        self.parcel_id = parcel_id
        self.hold()  # what the hub sends while the broker answers follows what it answers
        self.hub.subscribe(self, parcel, loaded=known is None)
        recovery, first = await self.hub.recover(self, parcel_id, since, epoch)
        if self.closing():
            return
        self.send_text(protocol.subscribed(parcel_id, user.role, parcel["status"], self.hub.stops_before(parcel_id),
                                           epoch=recovery.epoch, offset=recovery.offset,
                                           recovered=None if since is None else recovery.missed is not None))
        for text in first:
            self.send_text(text)
        self.release(recovery.offset)

    def last_seen(self) -> tuple[int | None, str]:
        """What a reconnecting client saw last, `since` and `epoch` (docs/protocol.md, "Recovery on
        reconnect"); Closed (4400) when malformed."""
        since, epoch = self._argument("since"), self._argument("epoch")
        if not since:
            return None, ""
        if not re.fullmatch(r"[0-9]{1,15}", since):
            self._refuse(CLOSE_BAD_REQUEST, "since must be a non-negative integer")
        if len(epoch) > 64:
            self._refuse(CLOSE_BAD_REQUEST, "epoch must be at most 64 characters")
        return int(since), epoch

    async def look_up(self, short: tokens.ShortShare) -> tokens.Shared:
        """What a short share token names, a batched read (Closed for an unknown or expired
        link: 4401; no database: 1013)."""
        named = shares.names(await self.read(self.application.lookups.share_link(short.token)), utcnow())
        if named is None:
            self._refuse(CLOSE_UNAUTHENTICATED, shares.GONE)
        return tokens.Shared(*named)

    async def link(self, shared: tokens.Shared, parcel_id: int | None) -> tuple[User, dict[str, Any] | None]:
        """A share link's viewer and its parcel (None: the link is for another parcel), or
        Closed for a link no longer valid (4401; no database: 1013)."""
        if shared.parcel_id != parcel_id:
            return link_viewer(shared.parcel_id), None
        parcel = await self.read(self.application.lookups.parcel(parcel_id))
        if not shares.still_valid(parcel, shared.version, utcnow()):
            self._refuse(CLOSE_UNAUTHENTICATED, shares.GONE)
        if parcel["status"] in parcels.FINISHED:
            self._refuse(CLOSE_UNAUTHENTICATED, shares.NOT_LIVE.format(status=parcel["status"]))
        return link_viewer(parcel_id), parcel

    def receive(self, message: dict[str, Any]) -> None:
        state = self.hub.parcel_state(self.parcel_id)
        if message["type"] == "location_batch":
            fixes = protocol.parse_batch(message, self.parcel_id)
            authorise_location(self.user, state)
            return self.hub.store_batch(self.parcel_id, self.user.id, fixes)
        location = protocol.parse_location(message, self.parcel_id)
        authorise_location(self.user, state)
        self.hub.publish_location(self.parcel_id, self.user.id, location)

    def left(self) -> None:
        if self.parcel_id is None:
            return
        self.hub.unsubscribe(self, self.parcel_id)
        if self.user.role == "driver":
            self.hub.driver_left(self.parcel_id, self.user.id)


def authorise_location(user: User, state: ParcelState) -> None:
    """May this user send a location for a parcel in this state now? (ProtocolError: no.)"""
    refusal = location_refusal(user, state)
    if refusal is not None:
        raise protocol.ProtocolError(refusal)
