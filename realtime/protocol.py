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
from models.db import iso, parse_iso, utcnow
from models.locations import EARLIEST_FIX, LATEST_FIX

# Optional extras a driver may add, with the range each must lie in.
EXTRAS = {"accuracy": (0.0, 1e6), "heading": (0.0, 360.0), "speed": (0.0, 1e4)}
MESSAGE_TYPES = ("location_update", "location_batch")
MAX_BATCH = 200  # fixes in one location_batch


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
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type: {str(kind)[:40]!r}" if kind is not None else "message has no type")
    return message


def parse_location(message: dict[str, Any], parcel_id: int | None) -> dict[str, Any]:
    """The location a `location_update` carries: lat, lng, address and any extras.
    `parcel_id`: the socket's parcel, which a `parcel_id` in the message must name (None:
    the driver socket, where the handler checks it against the route)."""
    _check_parcel(message, parcel_id)
    try:
        return _fix(message)
    except geo.InvalidLocation as e:
        raise ProtocolError(str(e)) from None


def _check_parcel(message: dict[str, Any], parcel_id: int | None) -> None:
    if "parcel_id" in message and parcel_id is not None:
        claimed = message["parcel_id"]
        if isinstance(claimed, bool) or claimed != parcel_id:
            raise ProtocolError("parcel_id does not match this socket's parcel")


def _fix(value: Any) -> dict[str, Any]:
    location = geo.point(value)
    for name, (low, high) in EXTRAS.items():
        if value.get(name) is not None:
            location[name] = geo.number(value[name], name, low, high)
    return location


def parse_batch(message: dict[str, Any], parcel_id: int | None) -> list[tuple[dict[str, Any], datetime]]:
    """A `location_batch`'s fixes with their `recorded_at`, checked whole before any is used
    (docs/protocol.md, "Offline batches"): the first bad entry is named by its index.

    A `recorded_at` ahead of the server's clock (allowed up to `LATEST_FIX`, for the phone's
    clock) is taken as now: stored in the future, it would outrank every live fix that follows."""
    _check_parcel(message, parcel_id)
    entries = message.get("locations")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("locations must be a non-empty list")
    if len(entries) > MAX_BATCH:
        raise ProtocolError(f"a batch holds at most {MAX_BATCH} locations")
    now = utcnow()
    fixes: list[tuple[dict[str, Any], datetime]] = []
    previous = None
    for index, entry in enumerate(entries):
        try:
            location = _fix(entry)
            recorded = _recorded_at(entry.get("recorded_at"))
        except geo.InvalidLocation as e:
            raise ProtocolError(f"locations[{index}]: {e}") from None
        if not now - EARLIEST_FIX <= recorded <= now + LATEST_FIX:
            raise ProtocolError(f"locations[{index}]: recorded_at must lie within the last 24 hours")
        if previous is not None and recorded < previous:
            raise ProtocolError(f"locations[{index}]: recorded_at must not be earlier than the one before")
        previous = recorded
        fixes.append((location, min(recorded, now)))
    return fixes


def _recorded_at(value: Any) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise geo.InvalidLocation("recorded_at must be an ISO 8601 timestamp")
    try:
        moment = parse_iso(value)
    except ValueError:
        raise geo.InvalidLocation("recorded_at must be an ISO 8601 timestamp") from None
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# -- messages out -------------------------------------------------------------------


def error(message: str) -> str:
    return json.dumps({"type": "error", "message": message})


def subscribed(parcel_id: int, role: str, status: str, stops_before: int | None = None, *, epoch: str = "",
               offset: int = 0, recovered: bool | None = None) -> str:
    """A parcel socket's first message; `stops_before` when the parcel is on a route and the hub knows its place;
    the parcel's `epoch` and latest `offset`, and `recovered` when the client asked to recover
    (docs/protocol.md, "Recovery on reconnect")."""
    message: dict[str, Any] = {"type": "subscribed", "parcel_id": parcel_id, "role": role, "status": status,
                               "epoch": epoch, "offset": offset}
    if stops_before is not None:
        message["stops_before"] = stops_before
    if recovered is not None:
        message["recovered"] = recovered
    return json.dumps(message)


def with_offset(text: str, offset: int) -> str:
    """A built message (a JSON object) numbered on its parcel's stream: `"offset"` added last. The
    Redis broker's script does the same to the text it holds (realtime/broker.py, RECORD)."""
    return f'{text[:-1]},"offset":{offset}}}'


def without_offset(message: dict[str, Any]) -> dict[str, Any]:
    """A snapshot is no stream message: it is sent without the offset the broadcast had."""
    return {key: value for key, value in message.items() if key != "offset"}


def route_subscribed(parcel_ids: list[int]) -> str:
    """The driver socket's first message: the driver's active parcels in route order."""
    return json.dumps({"type": "subscribed", "role": "driver", "parcels": parcel_ids})


def route_changed(parcel_ids: list[int]) -> str:
    return json.dumps({"type": "parcels", "parcels": parcel_ids})


def location_message(parcel_id: int, driver_id: int | None, location: dict[str, Any], timestamp: str,
                     eta: dict[str, Any] | None = None, low_quality: bool = False) -> dict[str, Any]:
    """A `location_update` broadcast as a dict (the hub encodes it once per audience)."""
    message = {
        "type": "location_update",
        "driver_id": str(driver_id) if driver_id is not None else None,
        "location": location,
        "parcel_id": parcel_id,
        "timestamp": timestamp,
        "eta": eta,
    }
    if low_quality:
        message["quality"] = "low"
    return message


def encode(message: dict[str, Any], viewer: bool = False) -> str:
    """A built message as sent; a share link's viewer gets no user id (docs/protocol.md, "Share links")."""
    return json.dumps({**message, "driver_id": None} if viewer else message)


def status(parcel_id: int, status: str, timestamp: datetime | str, driver_id: int | None | bool = False,
           ends: tuple[dict[str, Any], dict[str, Any]] | None = None, offset: int | None = None) -> str:
    """A status change; the board's copy also names the driver (`driver_id` given) and the
    parcel's pickup and destination (`ends`), so it can pin a parcel assigned meanwhile;
    a tracking socket's copy carries its `offset` on the parcel's stream."""
    when = timestamp if isinstance(timestamp, str) else iso(timestamp)
    message: dict[str, Any] = {"type": "status", "parcel_id": parcel_id, "status": status, "timestamp": when}
    if driver_id is not False:
        message["driver_id"] = str(driver_id) if driver_id is not None else None
    if ends is not None:
        message["pickup"], message["destination"] = place(ends[0]), place(ends[1])
    return _numbered(message, offset)


def _numbered(message: dict[str, Any], offset: int | None) -> str:
    """A parcel's message as sent, with its `offset` when it has one (docs/protocol.md, "Recovery on reconnect")."""
    if offset is not None:
        message["offset"] = offset
    return json.dumps(message)


def route_position(parcel_id: int, stops_before: int, offset: int | None = None) -> str:
    """How many of its driver's stops come before this parcel (docs/protocol.md, "The route")."""
    return _numbered({"type": "route_position", "parcel_id": parcel_id, "stops_before": stops_before}, offset)


def geofence(parcel_id: int, zone: str, event: str, timestamp: str, offset: int | None = None) -> str:
    return _numbered({"type": "geofence", "parcel_id": parcel_id, "zone": zone, "event": event,
                      "timestamp": timestamp}, offset)


def board(entries: list[dict[str, Any]]) -> str:
    """The dispatcher's board on connect: every active parcel (docs/protocol.md, "The dispatcher's board")."""
    return json.dumps({"type": "board", "parcels": entries})


def place(point: dict[str, Any]) -> dict[str, Any]:
    """A parcel's pickup or destination as the board shows it."""
    return {"lat": point["lat"], "lng": point["lng"], "address": point.get("address", "")}


def board_entry(parcel_id: int, status: str, driver_id: int | None, location: dict[str, Any] | None,
                timestamp: str | None, pickup: dict[str, Any], destination: dict[str, Any]) -> dict[str, Any]:
    """One active parcel of the board: where its truck is, and its two ends for the map's pins."""
    return {"parcel_id": parcel_id, "status": status, "driver_id": str(driver_id) if driver_id is not None else None,
            "location": location, "timestamp": timestamp, "pickup": place(pickup), "destination": place(destination)}
