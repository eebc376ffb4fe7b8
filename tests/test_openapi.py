"""The API described (docs/protocol.md, "The API described"): `GET /api/openapi.json` is a
valid OpenAPI 3.1 document, every API route of app.py is in it, and a property-based run of it
(schemathesis) against the real server finds no 5xx and no answer that contradicts it.

The run: every operation, with examples that fit the description and examples that do not,
as a dispatcher (the role that may call the most), a client, a driver and an API key (a
dispatcher within its scopes), over seeded people and parcels so that ids, share links and
proofs exist: besides the generated ids, a run per seeded one. Reads go first, revoking last.
Each answer is checked for a 5xx, its status being described, its content type, its headers
and its body's schema. Hypothesis is derandomized, so the examples are the same on every run.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
import tornado.web
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi import schemas as _openapi_schemas  # noqa: F401
from urllib3 import encode_multipart_formdata

from handlers import openapi
from handlers.base import ApiHandler
from tests.conftest import World, body, refused

# (Imported above, in the main thread: `from_dict` imports it lazily, and the run is in a worker
# thread, where pytest's assertion rewriting of a schemathesis module hit CPython 3.11's "AST
# constructor recursion depth mismatch".)
EXAMPLES = 50  # per operation as a dispatcher (about 4,500 calls in all: 45-65 s on the shared 2-core machine)
EXAMPLES_OTHERS = 12  # per operation as a client, a driver and an API key
FUZZ = hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                           suppress_health_check=list(HealthCheck))
ORDER = {"GET": 0, "DELETE": 2}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@schemathesis.serializer("text/csv")
def csv_file(ctx: Any, rows: Any) -> bytes:
    """The import's rows (`ImportRow` objects) as the CSV file the server reads: a header row, then the rows."""
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return json.dumps(rows).encode()  # not rows at all (an example that does not fit): sent as it is
    columns = list(dict.fromkeys(["client_email", *(key for row in rows for key in row)]))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@pytest.mark.gen_test
async def test_the_description_is_served_to_anyone_and_valid(world: World) -> None:
    response = await world.api("GET", "/api/openapi.json")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert "max-age" in response.headers["Cache-Control"]
    document = body(response)
    validate(document)  # openapi-spec-validator: raises on anything the OpenAPI 3.1 schema does not allow
    assert document["openapi"].startswith("3.1")
    again = await world.api("GET", "/api/openapi.json", headers={"If-None-Match": response.headers["Etag"]})
    assert again.code == 304  # cacheable: a client revalidates instead of fetching it again
    # Shared schemas are referenced, not copied: a parcel is described once.
    assert json.dumps(document["paths"]).count('"#/components/schemas/Parcel"') >= 5
    assert '"owner_id"' not in json.dumps(document["paths"]["/api/parcels/{parcel_id}/"])


def test_every_api_route_of_the_app_is_described(app: tornado.web.Application) -> None:
    assert openapi.undescribed(app) == []
    document = openapi.document(app)
    api_routes = [route for route in openapi.routes(app) if route.is_api]
    assert len(api_routes) >= 20
    for route in api_routes:
        names = [p["name"] for p in route.parameters(route.methods[0])]
        item = document["paths"][route.template(names)]
        assert set(route.methods) <= set(item), (route.pattern, route.methods)
        assert [p["name"] for p in item.get("parameters", [])] == names
    # The share link's JSON and files are part of it; the pages are not.
    assert {"/t/{token}/locations/", "/t/{token}/proof/", "/t/{token}/proof/{kind}/"} <= set(document["paths"])
    assert not [path for path in document["paths"] if path.startswith(("/dispatch", "/driver", "/login"))]


def test_an_endpoint_without_a_description_is_named() -> None:
    """What fails the test above when someone adds an API endpoint and no description."""

    class Undescribed(ApiHandler):
        @openapi.described("Described", responses={200: openapi.ref("Parcel")})
        async def get(self, thing_id: str) -> None:
            pass

        async def delete(self, thing_id: str) -> None:
            pass

    app = tornado.web.Application([(r"/api/things/([0-9]{1,18})/?", Undescribed)])
    assert openapi.undescribed(app) == ["DELETE /api/things/([0-9]{1,18})/?"]
    assert list(openapi.document(app)["paths"]["/api/things/{thing_id}/"]) == ["parameters", "get"]


# -- what the run found, each fixed --------------------------------------------------------


@pytest.mark.gen_test
async def test_a_time_before_the_year_1000_is_answered_as_iso_8601(world: World) -> None:
    client = await world.user("client")
    point = {"lat": 28.61, "lng": 77.23, "address": ""}
    created = await world.api("POST", "/api/parcels/", client, {
        "pickup": point, "destination": point, "window": {"from": "0902-07-04T18:53:17Z", "to": "2026-01-08T10:00Z"}})
    assert created.code == 201, created.body
    assert body(created)["window"] == {"from": "0902-07-04T18:53:17.000Z", "to": "2026-01-08T10:00:00.000Z"}


@pytest.mark.gen_test
async def test_a_share_link_json_endpoint_with_a_malformed_token_answers_json(world: World) -> None:
    for path in ("/t/%26/proof/", "/t/%C2%A0/proof/photo/", "/t/a%20b/locations", "/t//locations/"):
        response = await world.api("GET", path)
        assert response.headers["Content-Type"].startswith("application/json"), path
        refused(response, 404, path)


# -- the run against the real server ------------------------------------------------------


def png(width: int = 120, height: int = 40) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 255).save(out, "PNG")
    return out.getvalue()


@dataclass
class Seeded:
    """Who the run calls as, whose ids it leaves alone, and the seeded values path parameters
    and body fields are set to in the runs apart."""

    callers: list[tuple[str, int]]  # a bearer token and how many examples per operation and run
    caller_ids: set[int]
    paths: dict[str, list[Any]]
    bodies: dict[str, list[Any]]


async def seed(world: World) -> Seeded:
    """People, parcels in every status, share links and proofs, so that generated ids can name real ones."""
    me, client, driver = [await world.user(role) for role in ("dispatcher", "client", "driver")]
    clients, drivers = [client, await world.user("client")], [driver, await world.user("driver")]
    others = [clients[1], drivers[1], await world.user("dispatcher")]  # the ones the run may deactivate
    statuses = ("pending", "assigned", "in_transit", "in_transit", "in_transit", "cancelled")
    parcels = [await world.parcel(clients[i % 2], drivers[i % 2] if status != "pending" else None, status=status)
               for i, status in enumerate(statuses)]
    waiting, delivered, failed = (p["_id"] for p in parcels[2:5])
    moved = await world.api("POST", f"/api/parcels/{failed}/status/", me, {"status": "failed", "reason": "refused"})
    assert moved.code == 200, moved.body
    for parcel_id, by in ((waiting, drivers[0]), (delivered, drivers[1])):  # a proof waiting, and one delivered
        payload, content_type = encode_multipart_formdata(
            {"signature": ("signature.png", png(), "image/png"), "received_by": "Asha Verma"})
        recorded = await world.api("POST", f"/api/parcels/{parcel_id}/proof/", by, raw=payload,
                                   headers={"Content-Type": content_type})
        assert recorded.code == 201, recorded.body
    moved = await world.api("POST", f"/api/parcels/{delivered}/status/", me, {"status": "delivered"})
    assert moved.code == 200, moved.body
    key = await world.api("POST", "/api/keys/", me, {"name": "Shop", "scopes": ["parcels:read", "parcels:write"]})
    assert key.code == 201, key.body
    tokens = []
    for parcel in parcels[:4]:
        shared = await world.api("POST", f"/api/parcels/{parcel['_id']}/share/", me)
        assert shared.code == 201, shared.body
        tokens.append(body(shared)["token"])
    return Seeded(
        callers=[(world.token(me, ttl=3600), EXAMPLES), *((world.token(user, ttl=3600), EXAMPLES_OTHERS)
                                                            for user in (client, driver)),
                 (body(key)["key"], EXAMPLES_OTHERS)],
        caller_ids={me.id, client.id, driver.id},
        paths={"parcel_id": [p["_id"] for p in parcels], "token": tokens, "user_id": [u.id for u in others],
               "driver_id": [u.id for u in drivers], "key_id": [body(key)["id"]]},
        bodies={"owner_id": [u.id for u in clients], "driver_id": [u.id for u in drivers]},
    )


def strategies(operation: Any, seeded: Seeded, examples: int) -> list[tuple[st.SearchStrategy, int]]:
    """Runs of cases of both modes and how many examples each: one as generated, and (so that
    many calls reach real things) one per combination of seeded path parameters, with some
    body fields set to seeded values."""
    pins = {name: seeded.paths[name] for name in re.findall(r"{(\w+)}", operation.path) if name in seeded.paths}
    runs = [(st.one_of([operation.as_strategy(mode) for mode in GenerationMode]), examples)]
    combinations = [dict(zip(pins, values, strict=True)) for values in itertools.product(*pins.values())]
    if pins or operation.method.upper() in ("POST", "PUT", "PATCH"):
        fields = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in seeded.bodies.items()})
        for path in combinations:
            cases = st.one_of([operation.as_strategy(mode, path_parameters=path or None) for mode in GenerationMode])
            runs.append((st.tuples(cases, fields).map(lambda pair: with_fields(*pair)),
                         max(3, examples // len(combinations))))
    if operation.path.startswith("/api/users/{user_id}/"):
        # The callers keep their roles and sessions (activating someone starts a new session
        # of theirs), so that their tokens keep working.
        callers = {str(user_id) for user_id in seeded.caller_ids}
        runs = [(cases.filter(lambda case: str((case.path_parameters or {}).get("user_id")) not in callers), n)
                for cases, n in runs]
    return runs


def with_fields(case: Any, fields: dict[str, Any]) -> Any:
    """The case with those of `fields` that its JSON body has set to their values."""
    if isinstance(case.body, dict):
        case.body.update({key: value for key, value in fields.items() if key in case.body})
    return case


@dataclass
class Run:
    """What a run found: problems (the first example of each operation and kind), the statuses
    each operation answered with, and how many calls it made."""

    problems: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, set[int]] = field(default_factory=dict)
    calls: int = 0


def run_schemathesis(document: dict[str, Any], base_url: str, seeded: Seeded) -> Run:
    """Every operation of the description against the server, as each caller."""
    schema = schemathesis.openapi.from_dict(document)
    run = Run()
    # Not webhooks' creation: a generated URL that the server took would have it send the parcels'
    # events to wherever that URL names (tests/test_integrations.py covers it, with a loopback receiver).
    operations = [op for op in (result.ok() for result in schema.get_all_operations())
                  if (op.method.upper(), op.path) != ("POST", "/api/webhooks/")]
    # Reads first, while every seeded parcel, link and person is as seeded; revoking links last.
    for operation in sorted(operations, key=lambda op: ORDER.get(op.method.upper(), 1)):
        for token, examples in seeded.callers:
            for cases, n in strategies(operation, seeded, examples):
                fuzz(cases, n, base_url, {"Authorization": f"Bearer {token}"}, run)
    return run


def fuzz(cases: st.SearchStrategy, examples: int, base_url: str, headers: dict[str, str], run: Run) -> None:
    """Call the server with each case (the caller's token unless the case leaves it out or
    spoils it, as an example that does not fit does) and check its answer."""

    @hypothesis_settings(FUZZ, max_examples=examples)
    @given(cases)
    def call(case: Any) -> None:
        run.calls += 1
        try:
            response = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=10)
            run.statuses.setdefault(case.operation.label, set()).add(response.status_code)
        except (Failure, FailureGroup) as e:
            for failure in e.exceptions if isinstance(e, FailureGroup) else [e]:
                key = f"{case.operation.label}: {failure.title}"
                run.problems.setdefault(key, f"{key}\n  {case.method} {case.formatted_path} query={case.query} "
                                             f"body={str(case.body)[:200]}\n  {failure}"[:1500])

    call()


@pytest.mark.gen_test(timeout=300)
async def test_schemathesis_finds_no_server_error_and_no_answer_that_contradicts_the_description(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    seeded = await seed(world)
    document = body(await world.api("GET", "/api/openapi.json"))
    caplog.set_level(logging.WARNING)
    run = await asyncio.to_thread(run_schemathesis, document, f"http://127.0.0.1:{world.port}", seeded)
    assert not run.problems, "\n\n".join(run.problems.values())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, errors[:3]  # no traceback in the server's log either
    # The run reached the server's work, not only its refusals: most operations succeeded at least once.
    operations = [m for item in document["paths"].values() for m in item if m != "parameters"]
    assert run.calls >= 10 * len(operations)
    succeeded = [label for label, statuses in run.statuses.items() if any(200 <= s < 300 for s in statuses)]
    assert len(succeeded) >= 2 * len(operations) // 3, sorted(run.statuses.items())
