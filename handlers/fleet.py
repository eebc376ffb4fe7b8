"""The driver's route socket and the dispatcher's board (docs/protocol.md, "The driver
socket" and "The dispatcher's board"): subscribers of other shapes on the same hub.
"""

from __future__ import annotations

from typing import Any

from handlers.sockets import Socket
from models import parcels
from realtime import protocol


class RouteSocket(Socket):
    """`/ws/driver/`: one fix for every one of the driver's active parcels."""

    __slots__ = ()
    kind = "driver"
    roles = ("driver",)

    async def handshake(self) -> None:
        _, active = await self.admit(lambda user: parcels.active_for_driver(self.application.db, user.id))
        self.hub.join_route(self, active)
        self.send_text(protocol.route_subscribed(list(self.parcels)))

    def receive(self, message: dict[str, Any]) -> None:
        """Validate the fix (or batch), then hand it to the hub for each parcel the driver may send for now."""
        named = message.get("parcel_id", self.hub.WHOLE_ROUTE)  # one parcel of the route, or all of it
        if message["type"] == "location_batch":
            return self.hub.store_route_batch(self, protocol.parse_batch(message, None), named)
        self.hub.publish_route(self, protocol.parse_location(message, None), named)


class BoardSocket(Socket):
    """`/ws/dispatch/`: every active parcel, then every status and (conflated) location."""

    __slots__ = ()
    kind = "dispatch"
    roles = ("dispatcher",)

    async def handshake(self) -> None:
        _, active = await self.admit(lambda _: parcels.all_active(self.application.db))
        self.send_text(self.hub.join_board(self, active))
