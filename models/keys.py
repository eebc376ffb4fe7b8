"""API keys for a shop's system (docs/protocol.md, "API keys"): made, listed, revoked, and
checked at every use.

A key reads `pk_<id>_<secret>`: the id finds its record, the secret is 32 random bytes
(256 bits). Only the SHA-256 of the whole key is stored, and compared in constant time.
SHA-256 and not bcrypt: bcrypt's slowness protects a guessable password when the table
leaks, and nobody guesses 256 random bits, fast hash or not; bcrypt would instead cost
every API call a few hundred milliseconds of CPU. The key's record is read by `_id` at
every use (no cache), so a revocation holds at once in every process.

A key's caller acts as a dispatcher within its scopes (`caller`); models/access.py decides
what those allow. Its last use is written at most once a minute, in the background.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pymongo

from models import intake
from models.access import SCOPES, User
from models.db import Database, find_by_ids, iso
from models.intake import InvalidField

log = logging.getLogger("parcel.keys")

KEY = re.compile(r"pk_([0-9]{1,18})_([A-Za-z0-9_-]{43})")  # 32 bytes of token_urlsafe are 43 characters
MAX_NAME = 100
MAX_LISTED = 200  # keys `list_keys` returns, newest first
USE_EVERY = timedelta(minutes=1)  # a key's last use is written at most this often
USE_WRITE_WITHIN = 5.0  # seconds the background write of a last use may take
NOT_VALID = "the API key is not valid"
_writes: set[asyncio.Task] = set()  # last uses being written (kept so they are not collected)


class KeyRefused(ValueError):
    """A Bearer token that looks like a key but opens nothing: unknown, wrong or revoked."""


def looks_like_key(token: str | None) -> bool:
    """Is this token an API key by its form (never a JWT, nor a share link's 22 characters)?"""
    return bool(token) and KEY.fullmatch(token) is not None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_name(value: Any) -> str:
    name = intake.text(value, "name", MAX_NAME)
    if name is None:
        raise InvalidField("name", "is required: say whose system uses the key, like “Web shop”")
    return name


def check_scopes(value: Any) -> list[str]:
    """A non-empty list of known scopes, each once, in SCOPES' order."""
    if not isinstance(value, list) or not value:
        raise InvalidField("scopes", f"must be a list of one or more of {', '.join(SCOPES)}")
    if unknown := [s for s in value if s not in SCOPES]:
        raise InvalidField("scopes", f"must name only {', '.join(SCOPES)}, not {str(unknown[0])[:40]!r}")
    return [s for s in SCOPES if s in value]


def public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A key as the API lists it: never its secret nor its hash."""
    return {"id": doc["_id"], "name": doc["name"], "scopes": list(doc["scopes"]), "created_at": iso(doc["created_at"]),
            "last_used_at": iso(doc.get("last_used_at")), "revoked": doc.get("revoked_at") is not None,
            "revoked_at": iso(doc.get("revoked_at"))}


def caller(doc: Mapping[str, Any]) -> User:
    """Who a key's caller is: a dispatcher limited to the key's scopes (named after the key,
    with the id of the dispatcher who made it)."""
    return User(id=doc["created_by"], role="dispatcher", name=doc["name"], scopes=frozenset(doc["scopes"]))


async def create(db: Database, *, name: str, scopes: list[str], created_by: int,
                 now: datetime) -> tuple[dict[str, Any], str]:
    """A new key (name and scopes checked already); returns its record and the key itself,
    which is shown this once and stored only as its hash."""
    key_id = await db.next_id("api_keys")
    key = f"pk_{key_id}_{secrets.token_urlsafe(32)}"
    doc = {"_id": key_id, "name": name, "scopes": scopes, "hash": digest(key), "created_at": now,
           "created_by": created_by, "last_used_at": None, "revoked_at": None}
    await db.api_keys.insert_one(doc)
    return doc, key


async def list_keys(db: Database, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
    """The newest keys first, revoked ones too. Keys are never deleted, so the newest are the
    last ids handed out, read by id: the embedded server sorts `{}` by `_id` with a scan."""
    last = await db.last_id("api_keys")
    found = await find_by_ids(db.api_keys, range(last, max(0, last - limit), -1))
    return [found[key_id] for key_id in sorted(found, reverse=True)]


async def get_key(db: Database, key_id: int) -> dict[str, Any] | None:
    return await db.api_keys.find_one({"_id": key_id})


async def revoke(db: Database, key_id: int, now: datetime) -> dict[str, Any] | None:
    """Revoke a key (again: nothing changes); None when there is no such key."""
    await db.api_keys.update_one({"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": now}})
    return await get_key(db, key_id)


async def authenticate(db: Database, key: str) -> dict[str, Any]:
    """The record of a valid, unrevoked key; KeyRefused otherwise."""
    found = KEY.fullmatch(key)
    doc = found and await db.api_keys.find_one({"_id": int(found[1])})
    if not doc or not hmac.compare_digest(doc["hash"], digest(key)):
        raise KeyRefused(NOT_VALID)
    if doc.get("revoked_at") is not None:
        raise KeyRefused("the API key has been revoked")
    return doc


async def record_use(db: Database, doc: Mapping[str, Any], now: datetime) -> bool:
    """Note that the key was used at `now`, unless that was noted within USE_EVERY (by any
    process: the write's guard). True if written."""
    stale = now - USE_EVERY
    result = await db.api_keys.update_one(
        {"_id": doc["_id"], "$or": [{"last_used_at": None}, {"last_used_at": {"$lte": stale}}]},
        {"$set": {"last_used_at": now}},
    )
    return bool(result.modified_count)


def used(db: Database, doc: Mapping[str, Any], now: datetime) -> None:
    """A request used the key: `record_use` in the background when due, off the request's
    path and outside its database deadline."""
    last = doc.get("last_used_at")
    if last is not None and now - last < USE_EVERY:
        return

    async def write() -> None:
        try:
            with pymongo.timeout(USE_WRITE_WITHIN):
                await record_use(db, doc, now)
        except Exception:
            log.exception("could not record the use of API key %d", doc["_id"])

    task = asyncio.get_running_loop().create_task(write(), context=contextvars.Context())
    _writes.add(task)
    task.add_done_callback(_writes.discard)
