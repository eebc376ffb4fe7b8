"""A parcel's channel: everything the hub holds of one parcel, in one object.

The hub (realtime/hub.py) keeps one `Channel` per parcel it has seen: its subscribers,
what the hub knows of the parcel (`ParcelState`, while it has subscribers), its place on
its driver's route, the latest
location broadcast and the journey behind it, the sampling count and the driver's
position not yet written, the newest offline-batch fix stored, and the board's
conflation (when its location last went to the boards, the frame held back since).

A channel is made on first use and dropped by the hub in one place (`Hub._release`)
once it is `idle`: no subscriber, nothing unsaved, no board update waiting, and nothing
of the journey to remember (which lasts until the parcel finishes, so that the sampling
count, the snapshot and the batch fixes stored run on across a driver's reconnections).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from models import parcels, shares
from models.access import User
from models.db import iso, utcnow
from realtime import protocol
from realtime.journey import Journey


class Subscriber(Protocol):
    """A socket the hub sends to (handlers/sockets.py): a parcel's, a route's or a board's."""

    user: User
    kind: str  # "tracking", "driver" (a route) or "dispatch" (a board)

    def send_text(self, text: str) -> None: ...

    def send_frame(self, frame: bytes, offset: int | None = None) -> None: ...

    def revoke(self, message: str, code: int = ...) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


def stored_location(parcel: dict[str, Any]) -> dict[str, Any] | None:
    """A parcel's stored last location as a location_update (the snapshot when none is live)."""
    last = parcel.get("last_location")
    if not last:
        return None
    location = {"lat": last["lat"], "lng": last["lng"], "address": last.get("address", "")}
    driver_id = last.get("driver_id", parcel.get("driver_id"))
    return protocol.location_message(parcel["_id"], driver_id, location, iso(last["timestamp"]))


@dataclass(frozen=True)
class ParcelState:
    """What the hub knows of a parcel with subscribers, for every message's check."""

    driver_id: int | None
    status: str
    checked: float  # when it was last read from the database (time.monotonic)
    pickup: dict[str, Any]
    destination: dict[str, Any]
    parcel_id: int = 0
    owner_id: int | None = None
    stored: dict[str, Any] | None = None  # its stored last location, as a location_update, when read
    shown_from: str | None = None  # a share link shows positions from this time on (models.shares.position_since)

    @classmethod
    def of(cls, parcel: dict[str, Any]) -> ParcelState:
        return cls(parcel.get("driver_id"), parcel["status"], time.monotonic(), parcel["pickup"],
                   parcel["destination"], parcel["_id"], parcel.get("owner_id"), stored_location(parcel),
                   shares.position_since_text(parcel, utcnow()))

    def parcel(self) -> dict[str, Any]:
        """The parcel as far as a socket's checks need it (models.access.can_view)."""
        return {"_id": self.parcel_id, "owner_id": self.owner_id, "driver_id": self.driver_id,
                "status": self.status, "pickup": self.pickup, "destination": self.destination}

    @property
    def finished(self) -> bool:
        return self.status in parcels.FINISHED


@dataclass(frozen=True)
class Position:
    """A driver's accepted location not yet written to the history."""

    driver_id: int
    location: dict[str, Any]
    ms: int  # when it was accepted, in milliseconds since the epoch


class Channel:
    """One parcel's subscribers and live state (see the module's docstring)."""

    __slots__ = ("parcel_id", "subscribers", "state", "stale", "latest", "journey", "accepted", "unsaved",
                 "batch_newest", "board_sent", "board_waiting", "stops_before")

    def __init__(self, parcel_id: int) -> None:
        self.parcel_id = parcel_id
        self.subscribers: set[Subscriber] = set()
        self.state: ParcelState | None = None  # held while it has subscribers
        self.stale = False  # its state waits in the hub's next batch of re-reads
        self.latest: dict[str, Any] | None = None  # the latest location_update broadcast
        self.journey: Journey | None = None
        self.accepted = 0  # locations accepted in this process: every Nth is sampled
        self.unsaved: Position | None = None
        self.batch_newest: datetime | None = None  # the newest offline-batch fix stored
        self.board_sent: float | None = None  # when its location last went to the boards (time.monotonic)
        self.board_waiting: dict[str, Any] | None = None  # the latest location held back from the boards
        self.stops_before: int | None = None  # its place on its driver's route, as last told (`route_position`)

    @property
    def idle(self) -> bool:
        """Nothing left to keep: the hub may drop it."""
        return (not self.subscribers and self.unsaved is None and self.board_waiting is None
                and not self.accepted and self.latest is None and self.journey is None
                and self.batch_newest is None)

    def forget_position(self) -> None:
        """The driver's position is no longer the parcel's (it finished, or has another driver):
        no snapshot, journey or held board update of it is sent later."""
        self.latest = None
        self.journey = None
        self.board_waiting = None

    def finish(self) -> None:
        """The parcel finished: nothing of its journey is kept (its unsaved position is saved first)."""
        self.forget_position()
        self.accepted = 0
        self.batch_newest = None
        self.board_sent = None
