"""Webhooks (docs/protocol.md, "Webhooks"): a shop's URL told of its parcels' events, signed
as the Standard Webhooks specification says, at least once, from the durable outbox
(models/outbox.py).

- `create`, `list_hooks`, `get_hook`, `delete`: the hooks, which dispatchers manage.
- `Webhooks.record(event)`, the listener on the app's events (realtime/events.py): one
  outbox entry for each hook subscribed to the event's type, the parcel read then, under a
  key that an event told twice (two processes noticing one change) makes again.
- `Webhooks.send(payload)`, the outbox's sender of "webhook": POST, signed, each attempt
  recorded (the last KEPT_ATTEMPTS per hook); anything but a 2xx within SEND_WITHIN raises,
  and the outbox tries again with backoff for 24 h. A deleted hook's entries are dropped.

A webhook URL is a classic way into the internal network, so with APP_ENV=production it
must be `https://` and its host must resolve to public addresses only: checked at creation
and again at each send (DNS can change), where the connection goes to the very addresses
that were checked (`PublicOnly`), so no answer can change between the check and the use.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any
from urllib.parse import urlsplit

import pymongo
import standardwebhooks
import tornado.netutil
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from models import outbox, parcels
from models.db import Database, iso, utcnow
from models.intake import InvalidField
from realtime.events import TYPES, Event

log = logging.getLogger("parcel.webhooks")

MAX_URL = 2000
MAX_WEBHOOKS = 20  # hooks at once: each event is one outbox entry per subscribed hook
KEPT_ATTEMPTS = 100  # attempts kept (and shown) per hook, the newest
SEND_WITHIN = outbox.SEND_TIMEOUT - 1.0  # seconds for the answer: the outbox's budget, less the time to record it
MAX_ERROR = 300  # characters of a failed attempt's error kept
SECRET_BYTES = 32
USER_AGENT = "parcel-tracking-webhooks/1"


class UnsafeAddress(ValueError):
    """A URL whose host is not a public address (production), or cannot be resolved; `str()` says why."""


class DeliveryFailed(RuntimeError):
    """An attempt that was not answered with a 2xx; `str()` is what the outbox records."""


# -- the URL -------------------------------------------------------------------------------


def address_problem(ip: IPv4Address | IPv6Address) -> str | None:
    """Why a webhook may not be sent to this address (None: a public one)."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, test in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                       ("reserved", ip.is_reserved or ip.is_unspecified), ("private", ip.is_private)):
        if test:
            return kind
    return None if ip.is_global else "non-public"


async def _resolve_public(host: str, port: int, family: int = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
    """Every address `host` resolves to, as (family, socket address), if each one is public;
    UnsafeAddress otherwise (one private answer among public ones is refused too)."""
    try:
        answers = await asyncio.get_running_loop().getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnsafeAddress(f"{host} cannot be resolved") from None
    found = []
    for answer_family, _, _, _, address in answers:
        ip = ip_address(address[0].split("%", 1)[0])
        if kind := address_problem(ip):
            named = f"{ip} is" if host.strip("[]") == str(ip) else f"{host} resolves to {ip},"
            raise UnsafeAddress(f"{named} a {kind} address")
        found.append((answer_family, address))
    return found


class PublicOnly(tornado.netutil.Resolver):
    """Tornado's HTTP client resolving through `_resolve_public`: it connects only to checked addresses."""

    async def resolve(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        return await _resolve_public(host, port, family)


async def check_url(value: Any, production: bool) -> str:
    """A webhook's URL: http(s) with a host; in production https:// to public addresses only."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidField("url", "is required: the address your system receives events at, like "
                                  "https://shop.example/hooks/parcels")
    url = value.strip()
    if len(url) > MAX_URL:
        raise InvalidField("url", f"must be at most {MAX_URL} characters")
    if any(c <= " " or c == "\x7f" for c in url):
        raise InvalidField("url", "must not contain spaces or control characters")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise InvalidField("url", "has a port that is not a number from 1 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidField("url", "must be an https:// URL, like https://shop.example/hooks/parcels")
    if parts.username is not None or parts.password is not None:
        raise InvalidField("url", "must not carry a user name or password (the signature proves who sent it)")
    if production:
        if parts.scheme != "https":
            raise InvalidField("url", "must be an https:// URL")
        try:
            await _resolve_public(parts.hostname, port or 443)
        except UnsafeAddress as e:
            raise InvalidField("url", f"must reach a public address: {e}") from None
    return url


def check_events(value: Any) -> list[str]:
    """A non-empty list of known event types, each once, in TYPES' order."""
    if not isinstance(value, list) or not value:
        raise InvalidField("events", f"must be a list of one or more of {', '.join(TYPES)}")
    if unknown := [t for t in value if t not in TYPES]:
        raise InvalidField("events", f"must name only {', '.join(TYPES)}, not {str(unknown[0])[:40]!r}")
    return [t for t in TYPES if t in value]


# -- the hooks -----------------------------------------------------------------------------


class TooMany(ValueError):
    """MAX_WEBHOOKS exist already."""


def public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A hook as the API lists it: never its secret."""
    return {"id": doc["_id"], "url": doc["url"], "events": list(doc["events"]), "created_at": iso(doc["created_at"])}


def new_secret() -> str:
    """`whsec_<base64>` of 32 random bytes: what the Standard Webhooks libraries take."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


async def create(db: Database, *, url: str, events: list[str], created_by: int, now: datetime) -> dict[str, Any]:
    """A new hook (url and events checked already), with its secret; TooMany past MAX_WEBHOOKS."""
    if await db.webhooks.count_documents({}) >= MAX_WEBHOOKS:
        raise TooMany(f"there are {MAX_WEBHOOKS} webhooks already; delete one first")
    doc = {"_id": await db.next_id("webhooks"), "url": url, "events": events, "secret": new_secret(),
           "created_at": now, "created_by": created_by}
    await db.webhooks.insert_one(doc)
    return doc


async def list_hooks(db: Database) -> list[dict[str, Any]]:
    """Every hook, newest first."""
    return await db.webhooks.find({}).sort("_id", pymongo.DESCENDING).limit(MAX_WEBHOOKS).to_list(None)


async def get_hook(db: Database, hook_id: int) -> dict[str, Any] | None:
    return await db.webhooks.find_one({"_id": hook_id})


async def delete(db: Database, hook_id: int) -> bool:
    """Delete a hook and its recorded attempts (its queued entries are dropped when due); False if none."""
    result = await db.webhooks.delete_one({"_id": hook_id})
    await db.webhook_deliveries.delete_many({"hook_id": hook_id})
    return bool(result.deleted_count)


async def subscribed(db: Database, event_type: str) -> list[dict[str, Any]]:
    """The hooks told of events of this type."""
    return await db.webhooks.find({"events": event_type}).to_list(None)


# -- the attempts --------------------------------------------------------------------------


def attempt_public(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"event": doc["event"], "parcel_id": doc["parcel_id"], "webhook_id": doc["webhook_id"],
            "status": doc.get("status"), "error": doc.get("error"), "at": iso(doc["at"]),
            "duration_ms": doc.get("duration_ms")}


async def record_attempt(db: Database, hook_id: int, payload: Mapping[str, Any], status: int | None,
                         error: str | None, at: datetime, duration_ms: int) -> None:
    """Store one attempt, and forget those older than the hook's last KEPT_ATTEMPTS."""
    await db.webhook_deliveries.insert_one({
        "hook_id": hook_id, "event": payload["type"], "parcel_id": payload["data"]["id"],
        "webhook_id": payload["webhook_id"], "status": status, "error": error and error[:MAX_ERROR], "at": at,
        "duration_ms": duration_ms,
    })
    oldest = await db.webhook_deliveries.find({"hook_id": hook_id}, {"at": 1}).sort(
        "at", pymongo.DESCENDING).skip(KEPT_ATTEMPTS - 1).limit(1).to_list(None)
    if oldest:
        await db.webhook_deliveries.delete_many({"hook_id": hook_id, "at": {"$lt": oldest[0]["at"]}})


async def attempts(db: Database, hook_id: int, limit: int = KEPT_ATTEMPTS) -> list[dict[str, Any]]:
    """A hook's last attempts, newest first."""
    return await db.webhook_deliveries.find({"hook_id": hook_id}).sort(
        "at", pymongo.DESCENDING).limit(limit).to_list(None)


# -- telling and sending -------------------------------------------------------------------


def message_id(key: str) -> str:
    """The `webhook-id` of an outbox entry: the same on every retry, unique per hook and event."""
    return "msg_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def body(payload: Mapping[str, Any]) -> str:
    """What is POSTed: `{"type", "timestamp", "data"}` as JSON."""
    return json.dumps({"type": payload["type"], "timestamp": payload["timestamp"], "data": payload["data"]},
                      separators=(",", ":"))


def signed_headers(secret: str, webhook_id: str, text: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed at `now` (each retry signs anew)."""
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": standardwebhooks.Webhook(secret).sign(webhook_id, now, text)}


class Webhooks:
    """The app's side of webhooks: `record` listens to its events, `send` is the outbox's
    sender of "webhook" (the module's docstring). `wake` is the outbox's: something was queued."""

    def __init__(self, db: Database, *, production: bool, wake: Callable[[], None]) -> None:
        self.db = db
        self.production = production
        self.wake = wake

    async def record(self, event: Event) -> None:
        hooks = await subscribed(self.db, event.type)
        parcel = await parcels.get_parcel(self.db, event.parcel_id) if hooks else None
        if parcel is None:
            return
        await parcels.with_stops_before(self.db, [parcel])
        data = parcels.public(parcel)
        # A status change told twice has one step; `created` happens once, `arriving` once an attempt.
        step = event.step or len(parcel.get("timeline", ()))
        queued = False
        for hook in hooks:
            key = f"webhook:{hook['_id']}:{event.type}:{event.parcel_id}:{step}"
            queued |= await outbox.enqueue(self.db, key, "webhook", {
                "hook_id": hook["_id"], "type": event.type, "webhook_id": message_id(key),
                "timestamp": iso(event.timestamp), "data": data,
            })
        if queued:
            self.wake()

    async def send(self, payload: dict[str, Any]) -> None:
        hook = await get_hook(self.db, payload["hook_id"])
        if hook is None:
            raise outbox.Dropped("the webhook was deleted")
        text = body(payload)
        started, at = time.monotonic(), utcnow()
        status: int | None = None
        error: str | None = None
        client = AsyncHTTPClient(force_instance=True, resolver=PublicOnly() if self.production else None)
        try:  # a client of its own: one slow endpoint never waits in a queue shared with the others
            if self.production and not hook["url"].startswith("https://"):
                raise UnsafeAddress("the URL is not https://")
            response = await client.fetch(HTTPRequest(
                hook["url"], method="POST", body=text, follow_redirects=False, connect_timeout=SEND_WITHIN,
                request_timeout=SEND_WITHIN, user_agent=USER_AGENT, streaming_callback=lambda _chunk: None,
                headers={"Content-Type": "application/json",
                         **signed_headers(hook["secret"], payload["webhook_id"], text, datetime.now(UTC))},
            ), raise_error=False)
            status = response.code if response.code != 599 else None
            if status is None:
                error = str(response.error or "no answer")
        except UnsafeAddress as e:
            error = f"not sent: {e}, and webhooks go only to public addresses"
        except Exception as e:  # unreachable, refused, timed out: all one failed attempt
            error = str(e) or type(e).__name__
        finally:
            client.close()
        await record_attempt(self.db, hook["_id"], payload, status, error, at,
                             round((time.monotonic() - started) * 1000))
        if error is not None:
            raise DeliveryFailed(error)
        if not 200 <= status < 300:
            raise DeliveryFailed(f"the endpoint answered {status}")
