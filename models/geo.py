"""What makes a valid position: one rule for the socket, the API and the command line."""

from __future__ import annotations

import math
from typing import Any

MAX_ADDRESS_LENGTH = 256


class InvalidLocation(ValueError):
    """A position that is not acceptable; `str()` says why."""


def number(value: Any, name: str, low: float, high: float) -> float:
    """A finite number in [low, high]; booleans, strings, NaN and infinities are refused."""
    if value is None:
        raise InvalidLocation(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidLocation(f"{name} must be a finite number")
    try:
        value = float(value)  # an integer too large for a float overflows here
    except OverflowError:
        raise InvalidLocation(f"{name} must be a finite number") from None
    if not math.isfinite(value):
        raise InvalidLocation(f"{name} must be a finite number")
    if not low <= value <= high:
        raise InvalidLocation(f"{name} must be between {low:g} and {high:g}")
    return value


def address(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidLocation("address must be a string")
    if len(value) > MAX_ADDRESS_LENGTH:
        raise InvalidLocation(f"address must be at most {MAX_ADDRESS_LENGTH} characters")
    try:
        value.encode("utf-8")  # JSON allows lone surrogates; the database cannot store them
    except UnicodeEncodeError:
        raise InvalidLocation("address must be valid text") from None
    return value.strip()


def point(value: Any, name: str | None = None) -> dict[str, Any]:
    """`{"lat", "lng", "address"}` from an object that has them."""
    if not isinstance(value, dict):
        raise InvalidLocation(f"{name or 'location'} must be an object with lat, lng and address")
    try:
        return {
            "lat": number(value.get("lat"), "lat", -90, 90),
            "lng": number(value.get("lng"), "lng", -180, 180),
            "address": address(value.get("address")),
        }
    except InvalidLocation as e:
        raise InvalidLocation(f"{name}: {e}" if name else str(e)) from None


def parse_point_text(text: str, name: str) -> dict[str, Any]:
    """`"LAT,LNG[,ADDRESS]"` (the command line's form) as a point."""
    lat, _, rest = text.partition(",")
    lng, _, addr = rest.partition(",")
    try:
        values = {"lat": float(lat), "lng": float(lng), "address": addr}
    except ValueError:
        raise InvalidLocation(f'{name} must be "LAT,LNG[,ADDRESS]", not {text!r}') from None
    return point(values, name)
