"""Parcels in (docs/protocol.md, "Creating parcels", "Importing parcels"): the CSV import's
API, the dispatcher's form at `/dispatch/parcels/new` and the import page at `/dispatch/import`.

Thin: what a parcel may carry and what a file must be are models/intake.py and
models/imports.py; these read the request, hand it over, and show the answer. The form
works without JavaScript (a plain POST; on a problem it comes back with what was typed and
each problem beside its field). The import page checks a chosen file on the server and
shows its rows with each problem beside its line; a file without problems is imported
from that preview, which carries the file's text back (so nothing is kept on the server
between the two steps).
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, tzinfo
from email.message import Message
from typing import Any

import tornado.web
from tornado import httputil

from handlers.base import ApiHandler, BaseHandler, Refused
from handlers.openapi import POSITIVE, Answer, array, described, obj, ref
from handlers.pages import PageHandler, place_text, sentence, user_label
from models import imports, intake, parcels, users
from models.access import WRITE, names_owner
from models.db import parse_id
from settings import MAX_IMPORT_BODY_SIZE, STREAMED_BODY_LIMIT

MAX_FILE_TEXT = f"{MAX_IMPORT_BODY_SIZE // (1024 * 1024)} MiB"
TOO_LARGE = f"the file is larger than {MAX_FILE_TEXT}; import it in parts"
FORM_OVERHEAD = 64 * 1024  # bytes of an import page's form besides the file (its other fields, multipart's headers)
PREVIEW_ROWS = 100  # rows of a file the preview shows besides every row with a problem
FORM_FIELDS = ("client_email", "pickup_address", "pickup_point", "destination_address", "destination_point",
               "recipient_name", "recipient_email", "recipient_phone", "note", "window_from", "window_to", "tz")
MAX_ZONE_NAME = 64
FIELD_LIMITS = {"name": intake.MAX_NAME, "phone": intake.MAX_PHONE, "note": intake.MAX_NOTE}
FORM_LABELS = {
    "client_email": "Client's e-mail", "pickup_address": "Pickup address", "pickup_point": "Pickup point",
    "destination_address": "Destination address", "destination_point": "Destination point",
    "recipient_name": "Recipient's name", "recipient_email": "Recipient's e-mail",
    "recipient_phone": "Recipient's phone", "note": "Note for the driver", "window_from": "From",
    "window_to": "To",
}


def tell_created(handler: BaseHandler, created: list[dict[str, Any]]) -> None:
    """Tell the outside of each parcel an import created (realtime/events.py), and the hub of
    each one created assigned: its driver's route sockets and the dispatchers' boards update
    as for an assignment."""
    for parcel in created:
        handler.application.events.created(parcel)
        if parcel.get("driver_id") is not None:
            handler.hub.parcel_changed(parcel, previous_driver_id=None, status_changed=False)


class ImportHandler(ApiHandler):
    """POST /api/parcels/import/: a dispatcher's CSV file (`Content-Type: text/csv`) → 201
    `{"created", "ids"}`, or 400 `{"error", "rows"}` naming every bad row, nothing created."""

    max_body_size = MAX_IMPORT_BODY_SIZE
    too_large = TOO_LARGE
    key_scopes = {"POST": WRITE}  # docs/protocol.md, "API keys"

    @described("Import parcels from a CSV file (dispatchers): all of them, or none and every bad row named",
               "The file's header row names its columns (any order); each line below it is a parcel.",
               body={**array(ref("ImportRow")), "maxItems": imports.MAX_ROWS}, body_media="text/csv",
               responses={201: obj({"created": {"type": "integer", "minimum": 0}, "ids": array(POSITIVE)},
                                   required=["created", "ids"]),
                          400: Answer(ref("ImportRefused"), "The file has problems: each bad row's line and problems")},
               errors=(403, 415))
    async def post(self) -> None:
        if not names_owner(self.require_user()):
            raise Refused(403, "only a dispatcher can import parcels")
        declared = Message()
        declared["Content-Type"] = self.request.headers.get("Content-Type", "")
        charset = str(declared.get_param("charset") or "utf-8").lower()
        if declared.get_content_type() != "text/csv" or charset not in ("utf-8", "utf8"):
            raise Refused(415, "send the file as Content-Type: text/csv, in UTF-8")
        try:
            checked = await imports.check(self.db, self.raw_body())
        except imports.FileRefused as e:
            raise Refused(400, str(e)) from None
        if checked.bad:
            return self.send({"error": checked.summary(), "rows": checked.errors()}, status=400)
        created = await imports.create(self.db, checked)
        tell_created(self, created)
        self.send({"created": len(created), "ids": [parcel["_id"] for parcel in created]}, status=201)


def form_zone(name: str) -> tzinfo:
    """The time zone the form's person typed its times in (the page's script says which); UTC
    when it does not say, or names none we know."""
    if not name or len(name) > MAX_ZONE_NAME:
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return UTC


class NewParcelPage(PageHandler):
    """`/dispatch/parcels/new`: a dispatcher creates one parcel for a client."""

    roles = ("dispatcher",)

    async def get(self) -> None:
        await self.form({name: "" for name in FORM_FIELDS}, {}, notice=await self.created_notice())

    async def post(self) -> None:
        values = {name: self.get_body_argument(name, "") for name in FORM_FIELDS}
        problems: dict[str, str] = {}
        owner = intake.collect(problems, lambda: imports.email(values["client_email"], "client_email"))
        if owner is None:
            problems.setdefault("client_email", "is required: the e-mail of the client whose parcel it is")
        pickup = intake.point_text(values["pickup_point"], values["pickup_address"], "pickup", problems)
        destination = intake.point_text(values["destination_point"], values["destination_address"], "destination",
                                        problems)
        extras = intake.flat_extras(values, problems, form_zone(values["tz"]))
        found = await users.find_by_email(self.db, owner) if owner is not None else None
        client = found[0] if found else None
        if owner is not None and (problem := intake.owner_problem(client)):
            problems["client_email"] = problem
        if problems or client is None:
            self.set_status(400)
            return await self.form(values, problems)
        parcel = await parcels.create_parcel(self.db, owner_id=client.id, pickup=pickup, destination=destination,
                                             **extras)
        self.application.events.created(parcel)
        self.redirect(f"/dispatch/parcels/new?created={parcel['_id']}", status=303)

    async def form(self, values: dict[str, str], problems: dict[str, str],
                   notice: dict[str, Any] | None = None) -> None:
        # "is required: ..." reads as "Required: ..." beside a field.
        shown = {name: sentence(problem.removeprefix("is ")) for name, problem in problems.items()}
        latest = await parcels.get_parcel(self.db, await self.db.last_id("parcels"))
        self.page(
            "parcel_new.html", values=values, notice=notice, problems=shown, labels=FORM_LABELS,
            # Where the map opens (until the dispatcher moves it): the business's latest pickup.
            center=f"{latest['pickup']['lat']},{latest['pickup']['lng']}" if latest else "",
            limits=FIELD_LIMITS,
            **self.map_context(),
        )

    async def created_notice(self) -> dict[str, Any] | None:
        """What the page says after creating a parcel (`?created=<id>`)."""
        parcel_id = parse_id(self.get_query_argument("created", ""))
        parcel = await parcels.get_parcel(self.db, parcel_id) if parcel_id else None
        if parcel is None:
            return None
        owner = await users.get_user(self.db, parcel["owner_id"])
        return {"id": parcel["_id"], "owner": user_label(owner) if owner else "",
                "to": place_text(parcel["destination"]), "track_url": f"/parcels/{parcel['_id']}/track"}


@tornado.web.stream_request_body
class ImportPage(PageHandler):
    """`/dispatch/import`: choose a CSV file, see its rows with each problem beside its line,
    then import it. The form's body streams in (a file of up to MAX_IMPORT_BODY_SIZE, past the
    server's limit for other pages), so its XSRF field is checked once the body is read."""

    roles = ("dispatcher",)
    _form_read = False

    async def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        await super().prepare()
        if self.request.method == "POST":
            length = self.request.headers.get("Content-Length", "")
            if length.isascii() and length.isdigit() and int(length) > self.body_limit:
                raise Refused(413, TOO_LARGE)
            self.request.connection.set_max_body_size(STREAMED_BODY_LIMIT)

    @property
    def body_limit(self) -> int:
        # The preview's "Import" sends the file's text back: with CRLF line ends it may be a little larger.
        return 2 * MAX_IMPORT_BODY_SIZE + FORM_OVERHEAD

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.body_limit:
            self._chunks.append(chunk)

    def check_xsrf_cookie(self) -> None:
        if self._form_read:  # Tornado calls this before the body has come: it is called again below
            super().check_xsrf_cookie()

    def read_form(self) -> None:
        """Parse the streamed form into the request's arguments and files, then check its XSRF field."""
        if self._size > self.body_limit:
            raise Refused(413, TOO_LARGE)
        try:
            httputil.parse_body_arguments(self.request.headers.get("Content-Type", ""), b"".join(self._chunks),
                                          self.request.body_arguments, self.request.files, self.request.headers)
        except (httputil.HTTPInputError, ValueError):
            raise Refused(400, "the form could not be read; choose the file again") from None
        for name, value in self.request.body_arguments.items():
            self.request.arguments.setdefault(name, []).extend(value)
        self._form_read = True
        self.check_xsrf_cookie()

    def get(self) -> None:
        self.show(result=self.result())

    async def post(self) -> None:
        self.read_form()
        upload = (self.request.files.get("file") or [None])[0]
        if upload is not None:
            data = upload.body
            if len(data) > MAX_IMPORT_BODY_SIZE:
                return self.refuse(413, TOO_LARGE)
        else:
            data = self.get_body_argument("csv", "").encode("utf-8")
        if not data.strip():
            return self.refuse(400, "choose a CSV file first")
        try:
            checked = await imports.check(self.db, data)
        except imports.FileRefused as e:
            return self.refuse(400, str(e))
        if checked.bad or self.get_body_argument("step", "") != "import":
            self.set_status(400 if checked.bad else 200)
            return self.show(checked=checked, text=data.decode("utf-8-sig"),
                             filename=upload.filename if upload else self.get_body_argument("filename", ""))
        created = await imports.create(self.db, checked)
        tell_created(self, created)
        assigned = sum(parcel.get("driver_id") is not None for parcel in created)
        self.redirect(f"/dispatch/import?created={len(created)}&first={created[0]['_id']}"
                      f"&last={created[-1]['_id']}&assigned={assigned}", status=303)

    def refuse(self, status: int, message: str) -> None:
        """The file cannot be read at all: the form again, the reason beside the file field."""
        self.set_status(status)
        self.show(problem=sentence(message))

    def result(self) -> dict[str, int] | None:
        """What the page says after an import (`?created=…&first=…&last=…&assigned=…`)."""
        found = {name: parse_id(self.get_query_argument(name, "")) for name in ("created", "first", "last")}
        if any(value is None for value in found.values()):
            return None
        return {**found, "assigned": parse_id(self.get_query_argument("assigned", "")) or 0}

    def show(self, checked: imports.Checked | None = None, text: str = "", filename: str = "", problem: str = "",
             result: dict[str, int] | None = None) -> None:
        rows = []
        if checked is not None:
            bad = {row.line for row in checked.bad}
            rows = [preview_row(row) for n, row in enumerate(checked.rows) if n < PREVIEW_ROWS or row.line in bad]
        self.page(
            "import.html", checked=checked, rows=rows, text=text, filename=filename[:200], problem=problem,
            result=result, columns=imports.COLUMNS, required=imports.REQUIRED, max_rows=imports.MAX_ROWS,
            max_file=MAX_FILE_TEXT, max_bytes=MAX_IMPORT_BODY_SIZE, too_large=sentence(TOO_LARGE),
            summary=sentence(checked.summary()) if checked is not None and checked.bad else "",
            assigned=sum(bool(row.parcel.get("driver_id")) for row in checked.rows) if checked is not None else 0,
            preview_rows=PREVIEW_ROWS, limits=FIELD_LIMITS,
        )


def preview_row(row: imports.Row) -> dict[str, Any]:
    """A row as the preview shows it: its cells as typed, and its problems."""
    cells = row.cells

    def place(prefix: str) -> str:
        address = cells.get(f"{prefix}_address", "").strip()
        point = f"{cells.get(f'{prefix}_lat', '').strip()}, {cells.get(f'{prefix}_lng', '').strip()}"
        return f"{address} ({point})" if address else point

    window = " – ".join(v for v in (cells.get("window_from", "").strip(), cells.get("window_to", "").strip()) if v)
    return {"line": row.line, "client": cells.get("client_email", ""), "pickup": place("pickup"),
            "destination": place("destination"), "recipient": cells.get("recipient_name", ""),
            "driver": cells.get("driver_email", ""), "window": window,
            "problems": [f"{column} {problem}" for column, problem in row.problems.items()]}
