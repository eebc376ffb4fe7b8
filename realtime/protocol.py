"""The tracking socket's message protocol (docs/protocol.md, "The tracking socket").

Everything here is pure: a text frame in, a clean location or a `ProtocolError`
with the message the driver sees out; and every message the server sends, built
here and nowhere else.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from models import geo
from models.db import iso

# Optional extras a driver may add, with the range each must lie in.
EXTRAS = {"accuracy": (0.0, 1e6), "heading": (0.0, 360.0), "speed": (0.0, 1e4)}


class ProtocolError(ValueError):
    """A message the server refuses; `str()` is what the sender is told."""


def parse_message(text: str | bytes) -> dict[str, Any]:
    """A frame as a JSON object with a known `type`."""
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("message is not valid JSON") from None
    except RecursionError:  # a few thousand brackets fit in one frame
        raise ProtocolError("message is nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object")
    kind = message.get("type")
    if kind != "location_update":
        raise ProtocolError(f"unknown message type: {str(kind)[:40]!r}" if kind is not None else "message has no type")
    return message


def parse_location(message: dict[str, Any], parcel_id: int) -> dict[str, Any]:
    """The location a `location_update` carries: lat, lng, address and any extras."""
    if "parcel_id" in message:
        claimed = message["parcel_id"]
        if isinstance(claimed, bool) or claimed != parcel_id:
            raise ProtocolError("parcel_id does not match this socket's parcel")
    try:
        location = geo.point(message)
        for name, (low, high) in EXTRAS.items():
            if message.get(name) is not None:
                location[name] = geo.number(message[name], name, low, high)
    except geo.InvalidLocation as e:
        raise ProtocolError(str(e)) from None
    return location


# -- messages out -------------------------------------------------------------------


def error(message: str) -> str:
    return json.dumps({"type": "error", "message": message})


def subscribed(parcel_id: int, role: str, status: str) -> str:
    return json.dumps({"type": "subscribed", "parcel_id": parcel_id, "role": role, "status": status})


def location_update(parcel_id: int, driver_id: int | None, location: dict[str, Any], timestamp: datetime) -> str:
    return json.dumps({
        "type": "location_update",
        "driver_id": str(driver_id) if driver_id is not None else None,
        "location": location,
        "parcel_id": parcel_id,
        "timestamp": iso(timestamp),
    })


def status(parcel_id: int, status: str, timestamp: datetime) -> str:
    return json.dumps({"type": "status", "parcel_id": parcel_id, "status": status, "timestamp": iso(timestamp)})
