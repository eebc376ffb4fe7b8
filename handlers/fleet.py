"""The driver's route socket and the dispatcher's board (docs/protocol.md, "The driver
socket" and "The dispatcher's board"): subscribers of other shapes on the same hub.
"""

from __future__ import annotations

from typing import Any

from handlers.tracking import Socket, may_send_location
from models import parcels
from realtime import protocol

NO_PARCELS = "you have no active parcels to share your position with"
NOT_ON_ROUTE = "parcel_id is not one of your active parcels"


class RouteSocket(Socket):
    """`/ws/driver/`: one fix for every one of the driver's active parcels."""

    __slots__ = ()
    kind = "driver"
    roles = ("driver",)

    async def open(self) -> None:
        admitted = await self.admit(lambda user: parcels.active_for_driver(self.application.db, user.id))
        if admitted is not None:
            self.hub.join_route(self, admitted[1])
            self.send_text(protocol.route_subscribed(list(self.parcels)))

    def receive(self, message: dict[str, Any]) -> None:
        """Validate the fix (or batch), then hand it to each parcel the driver may send for now."""
        if message["type"] == "location_batch":
            fixes = protocol.parse_batch(message, None)
            for parcel_id in self._targets(message):
                self.hub.store_batch(parcel_id, self.user.id, fixes)
            return
        location = protocol.parse_location(message, None)
        for parcel_id in self._targets(message):
            self.hub.publish_location(parcel_id, self.user.id, location)

    def _targets(self, message: dict[str, Any]) -> list[int]:
        """The route's parcels (or the one `parcel_id` names) that this driver may send for."""
        route = self.hub.route(self)
        if "parcel_id" in message:
            named = message["parcel_id"]
            route = [(pid, state) for pid, state in route if pid == named and not isinstance(named, bool)]
            if not route:
                raise protocol.ProtocolError(NOT_ON_ROUTE)
        allowed = [pid for pid, state in route if may_send_location(self.user, state)]
        if not allowed:
            raise protocol.ProtocolError(NO_PARCELS)
        return allowed


class BoardSocket(Socket):
    """`/ws/dispatch/`: every active parcel, then every status and (conflated) location."""

    __slots__ = ()
    kind = "dispatch"
    roles = ("dispatcher",)

    async def open(self) -> None:
        admitted = await self.admit(lambda _: parcels.all_active(self.application.db))
        if admitted is not None:
            self.send_text(self.hub.join_board(self, admitted[1]))
