"""A day's parcels from a CSV file (docs/protocol.md, "Importing parcels"): the whole file
checked first, every bad row named by its line, then every parcel created in one step.

`check()` reads the file (UTF-8, with or without a BOM; a header row naming the columns,
in any order) and checks every row: its own fields through models/intake.py, then its
client and driver, looked up by e-mail all at once. `create()` creates the parcels of a
file that passed. The API (`POST /api/parcels/import/`) and the `/dispatch/import` page
both go through here.
"""

from __future__ import annotations

import asyncio
import contextvars
import csv
import io
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pymongo

from models import intake, parcels
from models.access import User
from models.db import IN_CHUNK, Database
from models.users import InvalidEmail, check_email

REQUIRED = ("client_email", "pickup_lat", "pickup_lng", "pickup_address",
            "destination_lat", "destination_lng", "destination_address")
OPTIONAL = ("recipient_name", "recipient_email", "recipient_phone", "note", "window_from", "window_to",
            "driver_email")
COLUMNS = REQUIRED + OPTIONAL
MAX_ROWS = 5_000
# An import's lookups and its insert take seconds at MAX_ROWS, past a request's database
# deadline (handlers/base.py); they get one of their own.
DEADLINE = 30.0
T = TypeVar("T")


class FileRefused(ValueError):
    """The file as a whole cannot be imported (not UTF-8, a bad header, too many rows); `str()` says why."""


@dataclass
class Row:
    """One parcel's line of the file: its cells by column, and what is wrong with it (or the
    parcel it makes: `models.parcels.new_parcel`'s keywords)."""

    line: int
    cells: dict[str, str]
    problems: dict[str, str] = field(default_factory=dict)
    parcel: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str:
        """Every problem of the row, each after its column's name."""
        return "; ".join(f"{column} {problem}" for column, problem in self.problems.items())


@dataclass
class Checked:
    """A whole file, checked: `bad` holds every row with a problem; nothing may be created unless it is empty."""

    rows: list[Row]
    columns: list[str]

    @property
    def bad(self) -> list[Row]:
        return [row for row in self.rows if row.problems]

    def errors(self) -> list[dict[str, Any]]:
        """The API's `rows`: `{"line", "error"}` of every bad row, in the file's order."""
        return [{"line": row.line, "error": row.error} for row in self.bad]

    def summary(self) -> str:
        bad = len(self.bad)
        return (f"{bad} of the file's {len(self.rows)} rows {'has a problem' if bad == 1 else 'have problems'}; "
                "nothing was imported")


def read(data: bytes) -> Checked:
    """The file's rows with the problems each has on its own (no database needed); `FileRefused`
    for a file that is not one we can read. Line numbers are the file's (the header is line 1);
    a row whose quoted cell spans lines is named by its first line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FileRefused(f"the file is not UTF-8 text (byte {e.start + 1} is not); save it as CSV UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    columns: list[str] | None = None
    line = 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue  # blank lines (and a spreadsheet's empty rows) are not parcels
            if columns is None:
                columns = header(cells)
                continue
            if len(rows) == MAX_ROWS:
                raise FileRefused(f"the file has more than {MAX_ROWS:,} rows; import at most {MAX_ROWS:,} at once")
            rows.append(row(start, columns, cells))
    except csv.Error as e:
        raise FileRefused(f"line {line}: the file is not valid CSV ({e})") from None
    if columns is None:
        raise FileRefused("the file is empty: it needs a header row naming the columns, then one row per parcel")
    if not rows:
        raise FileRefused("the file has a header but no rows: one row per parcel")
    return Checked(rows, columns)


def header(cells: list[str]) -> list[str]:
    """The columns the header row names; `FileRefused` for unknown, repeated or missing ones."""
    columns = [cell.strip().lower() for cell in cells]
    if len(columns) == 1 and (separator := next((c for c in ";\t|" if c in columns[0]), None)):
        shown = "a tab" if separator == "\t" else repr(separator)
        raise FileRefused(f"the header's columns are separated by {shown}; a CSV file separates them by commas")
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        names = ", ".join(repr(c[:40]) for c in unknown[:5])
        raise FileRefused(f"unknown column{'s' if len(unknown) > 1 else ''} {names}; "
                          f"the columns are {', '.join(COLUMNS)}")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise FileRefused(f"the header names {', '.join(repeated)} more than once")
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise FileRefused(f"the header has no {', '.join(missing)}; every file needs {', '.join(REQUIRED)}")
    return columns


def row(line: int, columns: list[str], cells: list[str]) -> Row:
    """A row's cells by column, checked on their own: everything but who the e-mails name."""
    values = dict(zip(columns, cells, strict=False))
    found = Row(line, {c: values.get(c, "") for c in columns})
    problems = found.problems
    if len(cells) > len(columns):
        problems["row"] = f"has {len(cells)} cells; the header names {len(columns)} columns"
        return found
    emails = {column: intake.collect(problems, lambda c=column: email(values.get(c, ""), c))
              for column in ("client_email", "driver_email")}
    if emails["client_email"] is None:
        problems.setdefault("client_email", "is required")
    pickup = intake.point_parts(values.get("pickup_lat"), values.get("pickup_lng"), values.get("pickup_address"),
                                "pickup", problems)
    destination = intake.point_parts(values.get("destination_lat"), values.get("destination_lng"),
                                     values.get("destination_address"), "destination", problems)
    extras = intake.flat_extras(values, problems)
    if not problems:
        found.parcel = {"client_email": emails["client_email"], "driver_email": emails["driver_email"],
                        "pickup": pickup, "destination": destination, **extras}
    else:  # kept for the lookups, so that an unknown client is named even in a row with other problems
        found.parcel = {"client_email": emails["client_email"], "driver_email": emails["driver_email"]}
    return found


def email(value: str, column: str) -> str | None:
    if not value.strip():
        return None
    try:
        return check_email(value)
    except InvalidEmail as e:
        raise intake.InvalidField(column, str(e).removeprefix("email ")) from None


async def people_by_email(db: Database, emails: Iterable[str | None]) -> dict[str, User]:
    """The users with these e-mails, by e-mail: `$in` queries of IN_CHUNK e-mails, not one
    query per row (the embedded server's `$in` costs the square of its length: 5,000
    e-mails in one took 26 s, in chunks of 25 under one)."""
    wanted = sorted({e for e in emails if e})
    found: dict[str, User] = {}
    for start in range(0, len(wanted), IN_CHUNK):
        query = {"email": {"$in": wanted[start:start + IN_CHUNK]}}
        async for doc in db.users.find(query, {"_id": 1, "email": 1, "role": 1, "name": 1, "active": 1}):
            found[doc["email"]] = User(id=doc["_id"], role=doc["role"], email=doc["email"], name=doc.get("name", ""),
                                       active=doc.get("active", True))
    return found


async def check(db: Database, data: bytes) -> Checked:
    """The whole file checked: each row on its own (off the IOLoop: 5,000 rows are CPU work),
    then its client and driver, every e-mail of the file looked up at once."""
    checked = await asyncio.to_thread(read, data)
    people = await on_own_deadline(people_by_email(
        db, (r.parcel.get(c) for r in checked.rows for c in ("client_email", "driver_email"))))
    for found in checked.rows:
        client, driver = found.parcel.get("client_email"), found.parcel.get("driver_email")
        if client and (problem := intake.owner_problem(people.get(client))):
            found.problems["client_email"] = problem
        if driver and (problem := intake.driver_problem(people.get(driver))):
            found.problems["driver_email"] = problem
        if not found.problems:
            found.parcel["owner_id"] = people[client].id
            found.parcel["driver_id"] = people[driver].id if driver else None
    return checked


async def create(db: Database, checked: Checked) -> list[dict[str, Any]]:
    """Create the parcels of a file that passed `check()` (none of its rows bad), in its order."""
    if checked.bad:
        raise ValueError("a file with bad rows is never imported")
    keys = ("owner_id", "driver_id", "pickup", "destination", "recipient", "note", "window")
    rows = [{key: found.parcel[key] for key in keys} for found in checked.rows]
    return await on_own_deadline(parcels.create_parcels(db, rows))


async def on_own_deadline(work: Awaitable[T]) -> T:
    """Run database work on DEADLINE rather than the request's deadline: a `pymongo.timeout`
    inside another can only shorten it, so the work runs in a task with a context of its own."""
    async def run() -> T:
        with pymongo.timeout(DEADLINE):
            return await work

    return await asyncio.get_running_loop().create_task(run(), context=contextvars.Context())
