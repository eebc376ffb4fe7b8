"""What a new parcel may carry besides its two points, and how its points and people are
named by text: one rule for the JSON API, the `/dispatch/parcels/new` form and the CSV
import (docs/protocol.md, "Creating parcels").

The recipient (`{"name", "email", "phone"}`, each optional), a note for the driver and a
delivery window (`{"from", "to"}`). Each of the three callers reads its own shape (a JSON
object, form fields, a CSV row) through these functions; a refusal is an `InvalidField`
naming the field as the form and the CSV name it (`recipient_email`, `window_to`, ...).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar

from models import geo
from models.access import User, may_drive, may_own_parcels
from models.users import InvalidEmail, check_email

MAX_NAME = 100
MAX_PHONE = 20
MAX_NOTE = 500
PHONE = re.compile(r"[0-9 +()\-]+")
POINT_TEXT = re.compile(r"\s*([^,\s]+)\s*(?:,|\s)\s*([^,\s]+)\s*")  # "28.6139, 77.2090" (or a space between)
RECIPIENT_KEYS = ("name", "email", "phone")
WINDOW_KEYS = ("from", "to")
# The JSON API names these fields as paths in its body.
JSON_NAMES = {"recipient_name": "recipient.name", "recipient_email": "recipient.email",
              "recipient_phone": "recipient.phone", "window_from": "window.from", "window_to": "window.to"}
T = TypeVar("T")


class InvalidField(ValueError):
    """A value that is not acceptable: `field` names it, `problem` says what is wrong with it
    ("must be ..."), `str()` says both."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem

    def for_json(self) -> str:
        """The message as the JSON API gives it: the field as a path in its body."""
        return f"{JSON_NAMES.get(self.field, self.field)} {self.problem}"


def collect(problems: dict[str, str], check: Callable[[], T]) -> T | None:
    """`check()`'s value; a refusal goes into `problems` (the first one per field) and gives None."""
    try:
        return check()
    except InvalidField as e:
        problems.setdefault(e.field, e.problem)
        return None


def text(value: Any, field: str, limit: int, lines: bool = False) -> str | None:
    """Text of at most `limit` characters, trimmed; None when there is none. Control characters
    are refused (newlines too, unless `lines`)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(field, "must be text")
    value = value.strip()
    if not value:
        return None
    if len(value) > limit:
        raise InvalidField(field, f"must be at most {limit} characters")
    allowed = "\n\t" if lines else ""
    if any(unicodedata.category(c) in ("Cc", "Cs") and c not in allowed for c in value.replace("\r\n", "\n")):
        raise InvalidField(field, "must be plain text" + ("" if lines else " on one line"))
    return value.replace("\r\n", "\n")


def recipient_email(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return check_email(value)
    except InvalidEmail as e:
        raise InvalidField("recipient_email", str(e).removeprefix("email ")) from None


def recipient_phone(value: Any) -> str | None:
    phone = text(value, "recipient_phone", MAX_PHONE)
    if phone is not None and (not PHONE.fullmatch(phone) or not any(c.isdigit() for c in phone)):
        raise InvalidField("recipient_phone", f"must be at most {MAX_PHONE} characters of digits, spaces and + ( ) -")
    return phone


def recipient(name: Any, email: Any, phone: Any, problems: dict[str, str] | None = None) -> dict[str, Any] | None:
    """`{"name", "email", "phone"}` (None for each not given), or None when none is given.
    With `problems`, every field's refusal goes there instead of the first being raised."""
    checks = {"name": lambda: text(name, "recipient_name", MAX_NAME), "email": lambda: recipient_email(email),
              "phone": lambda: recipient_phone(phone)}
    if problems is None:
        values = {key: check() for key, check in checks.items()}
    else:
        values = {key: collect(problems, check) for key, check in checks.items()}
    return values if any(v is not None for v in values.values()) else None


def recipient_object(value: Any) -> dict[str, Any] | None:
    """The JSON API's `recipient`: an object with any of name, email and phone, or null."""
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= set(RECIPIENT_KEYS):
        raise InvalidField("recipient", "must be an object with any of name, email and phone")
    return recipient(value.get("name"), value.get("email"), value.get("phone"))


def note(value: Any) -> str | None:
    """A note for the driver ("ring twice, the gate code is 1234"): at most MAX_NOTE characters."""
    return text(value, "note", MAX_NOTE, lines=True)


def moment(value: Any, field: str, zone: tzinfo = UTC) -> datetime | None:
    """An ISO 8601 time, to the millisecond; one without an offset is in `zone` (UTC, unless
    a form says in which zone its person typed it)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        return parsed.astimezone(UTC).replace(microsecond=parsed.microsecond // 1000 * 1000)
    except (ValueError, OverflowError):
        raise InvalidField(field, "must be an ISO 8601 time, like 2026-01-08T14:00:00Z") from None


def window(start: Any, end: Any, zone: tzinfo = UTC, problems: dict[str, str] | None = None) -> dict[str, Any] | None:
    """A delivery window `{"from", "to"}` (both, `from` before `to`), or None when neither is given."""
    checks = {"from": lambda: moment(start, "window_from", zone), "to": lambda: moment(end, "window_to", zone)}
    if problems is None:
        values = {key: check() for key, check in checks.items()}
    else:
        values = {key: collect(problems, check) for key, check in checks.items()}
        if {"window_from", "window_to"} & set(problems):
            return None
    if values["from"] is None and values["to"] is None:
        return None
    refusal = None
    if values["from"] is None:
        refusal = InvalidField("window_from", "is required when the window has an end")
    elif values["to"] is None:
        refusal = InvalidField("window_to", "is required when the window has a start")
    elif values["to"] <= values["from"]:
        refusal = InvalidField("window_to", "must be later than the window's start")
    if refusal is None:
        return values
    if problems is None:
        raise refusal
    problems.setdefault(refusal.field, refusal.problem)
    return None


def window_object(value: Any) -> dict[str, Any] | None:
    """The JSON API's `window`: an object with `from` and `to`, or null."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(WINDOW_KEYS):
        raise InvalidField("window", "must be an object with from and to")
    return window(value["from"], value["to"])


def extras(body: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON API's optional `recipient`, `note` and `window` of a new parcel, for
    models.parcels.create_parcel."""
    return {"recipient": recipient_object(body.get("recipient")), "note": note(body.get("note")),
            "window": window_object(body.get("window"))}


def flat_extras(values: Mapping[str, Any], problems: dict[str, str], zone: tzinfo = UTC) -> dict[str, Any]:
    """The same from flat text fields (a form, a CSV row): recipient_name, recipient_email,
    recipient_phone, note, window_from and window_to; every refusal goes into `problems`."""
    return {
        "recipient": recipient(values.get("recipient_name"), values.get("recipient_email"),
                               values.get("recipient_phone"), problems),
        "note": collect(problems, lambda: note(values.get("note"))),
        "window": window(values.get("window_from"), values.get("window_to"), zone, problems),
    }


def _coordinate(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, str):
        if not value.strip():
            raise InvalidField(field, "is required")
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidField(field, "must be a number, like 28.6139") from None
    try:
        return geo.number(value, "value", low, high)
    except geo.InvalidLocation as e:
        raise InvalidField(field, str(e).removeprefix("value ")) from None


def _address(value: Any, field: str) -> str:
    try:
        return geo.address(value)
    except geo.InvalidLocation as e:
        raise InvalidField(field, str(e).removeprefix("address ")) from None


def point_parts(lat: Any, lng: Any, address: Any, prefix: str, problems: dict[str, str]) -> dict[str, Any] | None:
    """A point from its three CSV columns (`pickup_lat`, `pickup_lng`, `pickup_address`)."""
    values = {"lat": collect(problems, lambda: _coordinate(lat, f"{prefix}_lat", -90, 90)),
              "lng": collect(problems, lambda: _coordinate(lng, f"{prefix}_lng", -180, 180)),
              "address": collect(problems, lambda: _address(address, f"{prefix}_address"))}
    return None if any(v is None for v in values.values()) else values


def point_text(typed: Any, address: Any, prefix: str, problems: dict[str, str]) -> dict[str, Any] | None:
    """A point from the form: `<prefix>_point` typed as "lat, lng" (or picked on the map) and
    `<prefix>_address`."""
    field = f"{prefix}_point"
    place = collect(problems, lambda: _address(address, f"{prefix}_address"))
    if not isinstance(typed, str) or not typed.strip():
        problems.setdefault(field, "is required: type it as lat, lng (like 28.6139, 77.2090) or pick it on the map")
        return None
    found = POINT_TEXT.fullmatch(typed)
    if found is None:
        problems.setdefault(field, "must be typed as lat, lng (like 28.6139, 77.2090)")
        return None
    numbers = []
    for part, name, limit in ((found[1], "the latitude (first number)", 90),
                              (found[2], "the longitude (second number)", 180)):
        try:
            numbers.append(_coordinate(part, field, -limit, limit))
        except InvalidField as e:
            problems.setdefault(field, f"{name} {e.problem}")
            return None
    return None if place is None else {"lat": numbers[0], "lng": numbers[1], "address": place}


def owner_problem(user: User | None) -> str | None:
    """Why this user (found by the e-mail given) cannot own a new parcel; None when they can."""
    return _role_problem(user, "client", may_own_parcels)


def driver_problem(user: User | None) -> str | None:
    """Why this user (found by the e-mail given) cannot be assigned parcels; None when they can."""
    return _role_problem(user, "driver", may_drive)


def _role_problem(user: User | None, role: str, may: Callable[[User | None], bool]) -> str | None:
    if user is None:
        return f"must be the e-mail of a {role} (nobody has this one)"
    if user.role != role:
        return f"must be the e-mail of a {role}, not of a {user.role}"
    if not may(user):
        return f"must be the e-mail of an active {role} ({user.email} is deactivated)"
    return None
