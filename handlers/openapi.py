"""The API described (docs/protocol.md, "The API described"): `GET /api/openapi.json`, an
OpenAPI 3.1 document assembled from the application's route table and from the description
each handler method carries, so that it cannot drift from the handlers:

    @described("A parcel", responses={200: ref("Parcel")}, errors=(404,))
    async def get(self, parcel_id: str) -> None: ...

The paths come from the routes' regexes, each group a path parameter named after the
handler method's argument; the shared schemas (Parcel, Point, User, Error, Proof, ...) are
defined once here and referenced. Errors are added where they always apply: 401 to every
call that needs a token, 400 and 413 to every call with a body, 400 to every call with
query arguments, and to every call that reads the database (and so who is calling) 403 (an
API key is refused wherever its scopes do not reach, docs/protocol.md "API keys") and 503
(the database did not answer).
tests/test_openapi.py fails for an API route without a description.
"""

from __future__ import annotations

import inspect
import json
import re
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tornado.web

from handlers.base import ApiHandler, ApiNotFound
from models import geo, imports, intake, parcels, users
from models.access import ROLES
from models.db import ID

F = TypeVar("F", bound=Callable[..., Any])
METHODS = ("get", "put", "post", "patch", "delete")
VERSION = "3.1.0"
ERROR_TEXTS = {
    400: "The input is not acceptable; the message says what is wrong",
    401: "No token, or one that is invalid, expired or no longer valid",
    403: "The caller may not do this",
    404: "No such thing, or not one the caller may see",
    409: "Not possible in the present state",
    413: "The request body is too large",
    415: "The body is not of the type this call takes",
    429: "Too many attempts; Retry-After says when to come back",
    503: "The database is unavailable; Retry-After says when to try again",
}
OK_TEXTS = {200: "OK", 201: "Created", 204: "Done; no content", 304: "Not modified since the ETag sent"}


def ref(name: str) -> dict[str, str]:
    """A reference to one of the shared schemas (the spec's validation fails for one that is missing)."""
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": dict(items)}


def nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema, or JSON null."""
    return {"anyOf": [dict(schema), {"type": "null"}]}


def obj(properties: Mapping[str, Any], required: Iterable[str] = (), closed: bool = False) -> dict[str, Any]:
    """A JSON object; `closed`: no other keys (for bodies the server refuses other keys of)."""
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def query(name: str, schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    """An optional query argument."""
    return {"name": name, "in": "query", "required": False, "schema": dict(schema), "description": description}


def limit(default: int, most: int) -> dict[str, Any]:
    return query("limit", {"type": "integer", "minimum": 1, "maximum": most, "default": default},
                 f"at most this many (1 to {most}; {default} when not given)")


BEFORE = query("before", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
               "only those with a smaller id: the next page, as the Link header names it")
SINCE = query("since", {"type": "string", "format": "date-time"},
              "only samples after this time (exclusive): the next page, as the Link header names it")
LINK = {"Link": {"description": 'the next page (RFC 8288, rel="next"); absent on the last page',
                 "schema": {"type": "string"}}}
TEXT = {"type": "string"}
TIME = {"type": "string", "format": "date-time", "description": "UTC, ISO 8601 with milliseconds"}
POSITIVE = {"type": "integer", "minimum": 1}


@dataclass(frozen=True)
class Answer:
    """A response other than a plain JSON body: its media types, headers or description."""

    schema: Mapping[str, Any] | None = None
    description: str = ""
    media: Sequence[str] = ("application/json",)
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """What one handler method takes and answers (see `described`)."""

    summary: str
    description: str
    body: Mapping[str, Any] | None
    body_media: str
    body_required: bool
    parameters: tuple[Mapping[str, Any], ...]
    responses: Mapping[int, Any]
    errors: tuple[int, ...]
    public: bool
    database: bool


def described(summary: str, description: str = "", *, body: Mapping[str, Any] | None = None,
              body_media: str = "application/json", body_required: bool = True,
              parameters: Sequence[Mapping[str, Any]] = (), responses: Mapping[int, Any],
              errors: Iterable[int] = (), public: bool = False, database: bool = True) -> Callable[[F], F]:
    """Describe the decorated handler method for `/api/openapi.json`; the method is unchanged.

    `body`: the request body's schema (of `body_media`); `parameters`: query arguments and
    headers (`query(...)`); `responses`: status → a JSON schema, an `Answer`, or None (no
    body); `errors`: the refusals besides those added where they always apply (module
    docstring); `public`: no token needed; `database`: False if it never reads the database (nor
    so looks at who is calling)."""
    operation = Operation(summary, description, body, body_media, body_required, tuple(parameters),
                          dict(responses), tuple(errors), public, database)

    def mark(method: F) -> F:
        method.__openapi__ = operation  # type: ignore[attr-defined]
        return method

    return mark


# -- the shared schemas -------------------------------------------------------------

ENDS = ("pickup", "destination")
POINT_FIELDS = {
    "lat": {"type": "number", "minimum": -90, "maximum": 90},
    "lng": {"type": "number", "minimum": -180, "maximum": 180},
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": obj({"error": {"type": "string", "minLength": 1, "description": "what was wrong, for a person"}},
                 required=["error"], closed=True),
    "Point": obj({**POINT_FIELDS, "address": TEXT}, required=["lat", "lng", "address"]),
    "PointIn": obj({**POINT_FIELDS, "address": nullable({"type": "string", "maxLength": geo.MAX_ADDRESS_LENGTH})},
                   required=["lat", "lng"]),
    "Location": obj({**POINT_FIELDS, "address": TEXT, "timestamp": TIME},
                    required=["lat", "lng", "address", "timestamp"]),
    "History": obj({"locations": array(ref("Location"))},
                   required=["locations"]),
    "Recipient": obj({"name": nullable(TEXT), "email": nullable(TEXT), "phone": nullable(TEXT)},
                     required=["name", "email", "phone"]),
    "RecipientIn": obj({
        "name": nullable({"type": "string", "maxLength": intake.MAX_NAME}),
        "email": nullable({"type": "string", "format": "email", "maxLength": users.MAX_EMAIL}),
        "phone": nullable({"type": "string", "maxLength": intake.MAX_PHONE,
                           "pattern": r"^[0-9 +()\-]*[0-9][0-9 +()\-]*$"}),
    }, closed=True),
    "Window": obj({"from": TIME, "to": TIME}, required=["from", "to"], closed=True),
    "Failure": obj({"reason": {"enum": list(parcels.FAILURE_REASONS)}, "note": TEXT, "timestamp": TIME},
                   required=["reason", "note", "timestamp"]),
    "TimelineStep": obj({"status": {"enum": list(parcels.STATUSES)}, "timestamp": nullable(TIME),
                         "reason": {"enum": list(parcels.FAILURE_REASONS)}, "note": TEXT},
                        required=["status", "timestamp"]),
    "Proof": obj({
        "received_by": nullable(TEXT),
        "photo": nullable({"type": "string", "description": "the photo's URL"}),
        "signature": nullable({"type": "string", "description": "the signature's URL"}),
        "taken_at": nullable(TIME),
        "location": nullable(obj(POINT_FIELDS, required=["lat", "lng"])),
    }, required=["received_by", "photo", "signature", "taken_at", "location"]),
    "Parcel": obj({
        "id": POSITIVE,
        "owner_id": POSITIVE,
        "driver_id": nullable(POSITIVE),
        "status": {"enum": list(parcels.STATUSES)},
        "pickup": ref("Point"),
        "destination": ref("Point"),
        "last_location": nullable(ref("Location")),
        "created_at": TIME,
        "timeline": array(ref("TimelineStep")),
        "attempts": {"type": "integer", "minimum": 0},
        "failure": nullable(ref("Failure")),
        "stops_before": nullable({"type": "integer", "minimum": 0}),
        "recipient": nullable(ref("Recipient")),
        "note": nullable(TEXT),
        "window": nullable(ref("Window")),
        "proof": nullable(ref("Proof")),
    }, required=["id", "owner_id", "driver_id", "status", "pickup", "destination", "last_location", "created_at",
                 "timeline", "attempts", "failure", "stops_before"]),
    "NewParcel": obj({
        "pickup": ref("PointIn"),
        "destination": ref("PointIn"),
        "owner_id": {**POSITIVE, "description": "the client whose parcel it is (a dispatcher must name one)"},
        "recipient": nullable(ref("RecipientIn")),
        "note": nullable({"type": "string", "maxLength": intake.MAX_NOTE}),
        "window": nullable(ref("Window")),
    }, required=["pickup", "destination"]),
    "User": obj({"id": POSITIVE, "email": TEXT, "name": TEXT, "role": {"enum": list(ROLES)}},
                required=["id", "email", "name", "role"]),
    "ManagedUser": {"allOf": [ref("User"),
                              obj({"active": {"type": "boolean"}}, required=["active"])]},
    "ImportRow": obj({
        **{f"{end}_{axis}": POINT_FIELDS[axis] for end in ENDS for axis in ("lat", "lng")},
        **{f"{end}_address": {"type": "string", "maxLength": geo.MAX_ADDRESS_LENGTH} for end in ENDS},
        **{f"{who}_email": {"type": "string", "format": "email"} for who in ("client", "recipient", "driver")},
        "recipient_name": {"type": "string", "maxLength": intake.MAX_NAME},
        "recipient_phone": {"type": "string", "maxLength": intake.MAX_PHONE},
        "note": {"type": "string", "maxLength": intake.MAX_NOTE},
        "window_from": TIME, "window_to": TIME,
    }, required=imports.REQUIRED, closed=True),
    "ImportRefused": obj({
        "error": {"type": "string", "minLength": 1},
        "rows": array(obj({"line": POSITIVE, "error": TEXT}, required=["line", "error"])),
    }, required=["error"]),
    "Tokens": obj({"access": TEXT, "refresh": TEXT}, required=["access", "refresh"]),
    "AccessToken": obj({"access": TEXT}, required=["access"]),
    "Health": obj({"status": {"enum": ["ok", "unavailable"]}, "database": {"enum": ["ok", "unavailable"]},
                   "broker": {"enum": ["ok", "off", "unavailable"]}}, required=["status", "database", "broker"]),
}


# -- the document -------------------------------------------------------------------

GROUP = re.compile(r"\((?!\?)([^()]*)\)")
WORDS = re.compile(r"[a-z_]+(\|[a-z_]+)*")


@dataclass(frozen=True)
class Route:
    """One route of the application: its regex, its handler class and the methods it implements."""

    pattern: str
    handler: type[tornado.web.RequestHandler]

    @property
    def methods(self) -> list[str]:
        """The HTTP methods the handler implements (lower case)."""
        return [m for m in METHODS if getattr(self.handler, m) is not getattr(tornado.web.RequestHandler, m)]

    def operation(self, method: str) -> Operation | None:
        return getattr(getattr(self.handler, method), "__openapi__", None)

    @property
    def is_api(self) -> bool:
        """Part of the API: a JSON handler (the share link's too), or anything under /api/."""
        return not issubclass(self.handler, ApiNotFound) and (
            issubclass(self.handler, ApiHandler) or self.pattern.startswith("/api/"))

    def template(self, names: Sequence[str]) -> str:
        """The OpenAPI path: each group becomes `{name}`, an optional trailing slash a slash."""
        groups = iter(names)
        path = GROUP.sub(lambda _: "{" + next(groups) + "}", self.pattern)
        path = re.sub(r"/\?$", "/", path).replace("\\.", ".")
        if re.search(r"[\\()\[\]?*+^$|]", path):
            raise ValueError(f"cannot describe the route {self.pattern!r}: it is not a plain path with groups")
        return path

    def parameters(self, method: str) -> list[dict[str, Any]]:
        """The path parameters: named as the handler method's arguments, typed by their groups."""
        names = [n for n in inspect.signature(getattr(self.handler, method)).parameters if n != "self"]
        groups = GROUP.findall(self.pattern)
        if len(names) < len(groups):
            raise ValueError(f"{self.handler.__name__}.{method} names fewer arguments than {self.pattern!r} has groups")
        return [{"name": name, "in": "path", "required": True, "schema": group_schema(group)}
                for name, group in zip(names, groups, strict=False)]


def group_schema(group: str) -> dict[str, Any]:
    """A path parameter's schema from its group: an id, one of some words, or a pattern."""
    if group == ID:
        return {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}
    if WORDS.fullmatch(group):
        return {"type": "string", "enum": group.split("|")}
    return {"type": "string", "pattern": f"^{group}$"}


def routes(app: tornado.web.Application) -> Iterator[Route]:
    """The application's routes in order (its own, not Tornado's static-file ones)."""
    for rule in app.wildcard_router.rules:
        pattern = getattr(rule.matcher, "regex", None)
        if pattern is not None and isinstance(rule.target, type):
            yield Route(pattern.pattern.removesuffix("$"), rule.target)


def undescribed(app: tornado.web.Application) -> list[str]:
    """`METHOD pattern` for each API route's method that carries no description."""
    return [f"{m.upper()} {r.pattern}" for r in routes(app) if r.is_api for m in r.methods if r.operation(m) is None]


def document(app: tornado.web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the application's described routes."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes(app):
        described_methods = [m for m in route.methods if route.operation(m) is not None]
        if not described_methods:
            continue
        path_parameters = route.parameters(described_methods[0])
        item = paths.setdefault(route.template([p["name"] for p in path_parameters]), {})
        if path_parameters:
            item["parameters"] = path_parameters
        for method in described_methods:
            item[method] = operation_object(route.operation(method))
    return {
        "openapi": VERSION,
        "info": {
            "title": "Parcel tracking",
            "version": "1",
            "description": "The HTTP API of parcel tracking (docs/protocol.md). Errors are `{\"error\": \"...\"}`. "
                           "Calls authenticate with `Authorization: Bearer <access token or API key>`; the login "
                           "cookie of the pages is not part of the API.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {str(status): error_response(status) for status in ERROR_TEXTS},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT or API key",
                "description": "An access token from POST /api/token/ (a JWT), or an API key",
            }},
        },
        "security": [{"bearer": []}],
    }


def error_response(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": ERROR_TEXTS[status],
                              "content": {"application/json": {"schema": ref("Error")}}}
    if status in (429, 503):
        answer["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    if status == 401:
        answer["headers"] = {"WWW-Authenticate": {"description": 'Bearer realm="api"', "schema": TEXT}}
    return answer


def operation_object(op: Operation) -> dict[str, Any]:
    result: dict[str, Any] = {"summary": op.summary}
    if op.description:
        result["description"] = op.description
    if op.parameters:
        result["parameters"] = [dict(p) for p in op.parameters]
    if op.body is not None:
        result["requestBody"] = {"required": op.body_required, "content": {op.body_media: {"schema": dict(op.body)}}}
    if op.public:
        result["security"] = []
    errors = set(op.errors)
    if not op.public:
        errors.add(401)
    if op.body is not None:
        errors |= {400, 413}
    if any(p.get("in") == "query" for p in op.parameters):
        errors.add(400)
    if op.database:
        errors |= {403, 503}
    responses = {str(status): response_object(status, answer) for status, answer in sorted(op.responses.items())}
    for status in sorted(errors):
        responses.setdefault(str(status), {"$ref": f"#/components/responses/{status}"})
    result["responses"] = responses
    return result


def response_object(status: int, answer: Any) -> dict[str, Any]:
    if not isinstance(answer, Answer):
        answer = Answer(schema=answer)
    result: dict[str, Any] = {"description": answer.description or OK_TEXTS.get(status) or ERROR_TEXTS[status]}
    if answer.schema is not None:
        result["content"] = {media: {"schema": dict(answer.schema)} for media in answer.media}
    if answer.headers:
        result["headers"] = dict(answer.headers)
    return result


_rendered: weakref.WeakKeyDictionary[tornado.web.Application, bytes] = weakref.WeakKeyDictionary()


def rendered(app: tornado.web.Application) -> bytes:
    """The document as sent: built once per application (routes do not change while it runs)."""
    if app not in _rendered:
        _rendered[app] = json.dumps(document(app), indent=1).encode()
    return _rendered[app]


class OpenApiHandler(ApiHandler):
    """GET /api/openapi.json: the API described, for anyone."""

    async def _authenticate(self) -> None:
        return None  # nothing here depends on who asks, and the database is not needed

    @described("This description of the API (OpenAPI 3.1)", public=True, database=False,
               responses={200: {"type": "object", "required": ["openapi", "paths"]}})
    async def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "public, max-age=3600")  # it changes with the code only; the ETag revalidates
        self.finish(rendered(self.application))
