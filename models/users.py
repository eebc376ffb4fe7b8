"""Users: integer ids, unique case-insensitive emails, bcrypt hashes never leaving here."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from pymongo.errors import DuplicateKeyError

from models.access import ROLES, User
from models.db import Database, find_by_ids, utcnow

MAX_EMAIL = 254
# An address a mail server would take, in ASCII: no spaces, control characters or quoting.
EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")


class EmailTaken(ValueError):
    """A user with that email exists already."""


class InvalidEmail(ValueError):
    """Not an e-mail address; `str()` says why, for the person."""


def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_email(email: object) -> str:
    """The address, trimmed and lower-cased, if it is one: the one rule for the API and the CLI."""
    if not isinstance(email, str) or not email.strip():
        raise InvalidEmail("email is required")
    email = normalise_email(email)
    if len(email) > MAX_EMAIL:
        raise InvalidEmail(f"email must be at most {MAX_EMAIL} characters")
    if not EMAIL.fullmatch(email):
        raise InvalidEmail("email must be an address like name@example.com")
    return email


def _user(doc: dict[str, Any]) -> User:
    return User(id=doc["_id"], role=doc["role"], email=doc["email"], name=doc.get("name", ""),
                session=doc.get("session", 0))


async def create_user(db: Database, *, email: str, password_hash: str, role: str, name: str = "") -> User:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    email = check_email(email)
    if await db.users.find_one({"email": email}, {"_id": 1}):
        raise EmailTaken(email)
    doc = {
        "_id": await db.next_id("users"),
        "email": email,
        "name": name.strip() or email.split("@")[0],
        "role": role,
        "password_hash": password_hash,
        "created_at": utcnow(),
    }
    try:
        await db.users.insert_one(doc)
    except DuplicateKeyError:  # a concurrent create won the race
        raise EmailTaken(email) from None
    return _user(doc)


async def end_sessions(db: Database, user_id: int, **changes: Any) -> User | None:
    """Move the user's session on (with `changes`: a new password hash, a new role), so
    every token and login cookie issued before stops working; the user as now stored."""
    await db.users.update_one({"_id": user_id}, {"$inc": {"session": 1}, **({"$set": changes} if changes else {})})
    return await get_user(db, user_id)


async def set_password(db: Database, user_id: int, password_hash: str) -> User | None:
    return await end_sessions(db, user_id, password_hash=password_hash)


async def set_role(db: Database, user_id: int, role: str) -> User | None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return await end_sessions(db, user_id, role=role)


async def get_user(db: Database, user_id: int) -> User | None:
    doc = await db.users.find_one({"_id": user_id}, {"password_hash": 0})
    return _user(doc) if doc else None


async def find_by_email(db: Database, email: str) -> tuple[User, str] | None:
    """The user and their password hash, for checking a login."""
    doc = await db.users.find_one({"email": normalise_email(email)})
    return (_user(doc), doc["password_hash"]) if doc else None


async def get_users(db: Database, user_ids: Iterable[int | None]) -> dict[int, User]:
    """The users with these ids (None skipped), by id."""
    found = await find_by_ids(db.users, user_ids, {"password_hash": 0})
    return {user_id: _user(doc) for user_id, doc in found.items()}


async def list_users(db: Database, role: str) -> list[User]:
    """Every user with this role (an indexed query)."""
    return [_user(doc) async for doc in db.users.find({"role": role}, {"password_hash": 0}).sort("_id", 1)]


class Directory:
    """Everyone with a role, read again at most every `ttl` seconds: the dispatch page's
    list of drivers, which at a business's size (500 drivers) costs the embedded server
    more than the rest of the page. A driver created meanwhile appears within `ttl`."""

    def __init__(self, db: Database, role: str, ttl: float = 30.0) -> None:
        self.db, self.role, self.ttl = db, role, ttl
        self._users: list[User] = []
        self._read_at = -ttl

    async def users(self) -> list[User]:
        if time.monotonic() - self._read_at >= self.ttl:
            self._users = await list_users(self.db, self.role)
            self._read_at = time.monotonic()
        return self._users
