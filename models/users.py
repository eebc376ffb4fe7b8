"""Users: integer ids, unique case-insensitive emails, bcrypt hashes never leaving here.

A user is active unless deactivated (`active: false` stored; absent means active), and
carries `search`: the prefixes of the words a dispatcher finds them by (docs/protocol.md,
"People"), so a search is an equality on an index, a window of ids at a time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pymongo.errors import DuplicateKeyError

from auth.passwords import check_length
from models.access import ROLES, User
from models.db import Database, find_by_ids, next_window, utcnow

MAX_EMAIL = 254
MAX_NAME = 100
MAX_PAGE = 500  # people in one page of the list
SEARCH_PREFIX = 10  # a word is indexed by its first 1..10 characters; a longer term is checked here
MAX_TERMS = 5  # words of a search that count
HIDDEN = {"password_hash": 0, "search": 0}  # what a read of users leaves out
EMAIL_TAKEN = "a user with that email exists already"
# An address a mail server would take, in ASCII: no spaces, control characters or quoting.
EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")


class EmailTaken(ValueError):
    """A user with that email exists already (EMAIL_TAKEN)."""


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


def check_account(email: object, password: object, role: object, name: object) -> tuple[dict[str, str], dict[str, str]]:
    """A new account's fields, checked: the one rule for the API and the people page. Returns
    the values to store (when nothing is wrong) and, by field in this order, what is wrong."""
    values: dict[str, str] = {}
    problems: dict[str, str] = {}
    try:
        values["email"] = check_email(email)
    except InvalidEmail as e:
        problems["email"] = str(e)
    if not isinstance(password, str) or (problem := check_length(password)):
        problems["password"] = problem if isinstance(password, str) else "password is required"
    if role not in ROLES:
        problems["role"] = f"role must be one of {', '.join(ROLES)}"
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
        problems["name"] = f"name must be text of at most {MAX_NAME} characters"
    values.update(password=password, role=role, name=name or "")
    return values, problems


def _words(email: str, name: str) -> set[str]:
    """What a search finds someone by: their name's words, their e-mail and its local part's words."""
    local = email.split("@", 1)[0]
    name = name.lower()
    return {w for w in (*name.split(), *re.split(r"[\s\-]+", name), *re.split(r"[._+\-]+", local), local, email) if w}


def search_keys(email: str, name: str) -> list[str]:
    """The `search` field: every prefix, up to SEARCH_PREFIX characters, of `_words`."""
    return sorted({w[:n] for w in _words(email, name) for n in range(1, min(len(w), SEARCH_PREFIX) + 1)})


def search_terms(text: str) -> list[str]:
    """The words of a search, lower-cased (at most MAX_TERMS)."""
    return text.lower().split()[:MAX_TERMS]


def _found(doc: dict[str, Any], terms: list[str]) -> bool:
    """Does every term begin one of the user's words (the index found them by the longest
    term's first SEARCH_PREFIX characters only)?"""
    words = _words(doc["email"], doc.get("name", ""))
    return all(any(w.startswith(term) for w in words) for term in terms)


def _user(doc: dict[str, Any]) -> User:
    return User(id=doc["_id"], role=doc["role"], email=doc["email"], name=doc.get("name", ""),
                session=doc.get("session", 0), active=doc.get("active", True))


async def create_user(db: Database, *, email: str, password_hash: str, role: str, name: str = "") -> User:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    email = check_email(email)
    if await db.users.find_one({"email": email}, {"_id": 1}):
        raise EmailTaken(email)
    name = name.strip() or email.split("@")[0]
    doc = {
        "_id": await db.next_id("users"),
        "email": email,
        "name": name,
        "role": role,
        "password_hash": password_hash,
        "created_at": utcnow(),
        "search": search_keys(email, name),
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


async def deactivate(db: Database, user_id: int) -> User | None:
    """Every session of theirs ends and logging in is refused until `activate`; their parcels
    stay as they are. The user as now stored (None: no such user)."""
    return await end_sessions(db, user_id, active=False)


async def activate(db: Database, user_id: int) -> User | None:
    """They may log in again (with the password they had); a new session begins. Someone
    active already stays as they are (their sessions go on)."""
    user = await get_user(db, user_id)
    if user is None or user.active:
        return user
    return await end_sessions(db, user_id, active=True)


async def get_user(db: Database, user_id: int) -> User | None:
    doc = await db.users.find_one({"_id": user_id}, HIDDEN)
    return _user(doc) if doc else None


async def find_by_email(db: Database, email: str) -> tuple[User, str] | None:
    """The user and their password hash, for checking a login."""
    doc = await db.users.find_one({"email": normalise_email(email)})
    return (_user(doc), doc["password_hash"]) if doc else None


async def get_users(db: Database, user_ids: Iterable[int | None]) -> dict[int, User]:
    """The users with these ids (None skipped), by id."""
    found = await find_by_ids(db.users, user_ids, HIDDEN)
    return {user_id: _user(doc) for user_id, doc in found.items()}


async def list_users(db: Database, role: str) -> list[User]:
    """Every user with this role (an indexed query)."""
    return [_user(doc) async for doc in db.users.find({"role": role}, HIDDEN).sort("_id", 1)]


@dataclass(frozen=True)
class People:
    """A page of people, newest first; `next_before` is the `before=` of the next page (None: the last)."""

    users: list[User]
    next_before: int | None


async def find_people(db: Database, *, role: str | None = None, search: str = "", limit: int = 50,
                      before: int | None = None) -> People:
    """People of one role (or of every role), newest first, with ids below `before`, whose
    words begin with each word of `search` (their name's, their e-mail's).

    Walks down windows of ids, like a page of parcels (models.parcels.find_page): `{role,
    _id: window}`, or `{[role,] search: key, _id: window}` with the key the longest term's
    first SEARCH_PREFIX characters, each served by an index and matching about a page.
    Everyone, unsearched, is read by id (`_newest`)."""
    terms = search_terms(search)
    key = max(terms, key=len)[:SEARCH_PREFIX] if terms else None
    top = await db.last_id("users") + 1
    high = top if before is None else min(before, top)
    if role is None and key is None:
        found = await _newest(db, high, limit + 1)
    else:
        scope = {**({"role": role} if role else {}), **({"search": key} if key else {})}
        found = await _walk(db, scope, terms, high, limit + 1)
    page = found[:limit]
    return People([_user(doc) for doc in page], page[-1]["_id"] if len(found) > limit else None)


async def _newest(db: Database, high: int, wanted: int) -> list[dict[str, Any]]:
    """Up to `wanted` users with ids below `high`, whatever their role. A range on `_id` alone
    is not served, but ids are handed out one after another, so a page is read by its ids
    (`$in` batches); a gap (a create that failed) is read past."""
    found: list[dict[str, Any]] = []
    size: float = wanted
    while high > 1 and len(found) < wanted:
        low = max(1, high - int(min(size, MAX_PAGE)))
        matched = (await find_by_ids(db.users, range(low, high), HIDDEN)).values()
        found += sorted(matched, key=lambda doc: doc["_id"], reverse=True)
        size = next_window(high - low, len(matched), wanted - len(found))
        high = low
    return found


async def _walk(db: Database, scope: dict[str, Any], terms: list[str], high: int, wanted: int) -> list[dict[str, Any]]:
    """Up to `wanted` users matching `scope` and `terms` with ids below `high`, from windows of ids walked down."""
    found: list[dict[str, Any]] = []
    size: float = wanted
    while high > 1 and len(found) < wanted:
        low = max(1, high - int(size))
        matched = [doc async for doc in db.users.find({**scope, "_id": {"$gte": low, "$lt": high}}, HIDDEN)
                   if _found(doc, terms)]
        found += sorted(matched, key=lambda doc: doc["_id"], reverse=True)
        size = next_window(high - low, len(matched), wanted - len(found))
        high = low
    return found


class Directory:
    """Everyone with a role, read again at most every `ttl` seconds: the dispatch page's
    list of drivers, which at a business's size (500 drivers) costs the embedded server
    more than the rest of the page. A driver created meanwhile appears within `ttl`."""

    def __init__(self, db: Database, role: str, ttl: float = 30.0) -> None:
        self.db, self.role, self.ttl = db, role, ttl
        self._users: list[User] = []
        self._read_at = -ttl

    async def users(self) -> list[User]:
        """The active ones (a deactivated driver is offered no parcels)."""
        if time.monotonic() - self._read_at >= self.ttl:
            self._users = [user for user in await list_users(self.db, self.role) if user.active]
            self._read_at = time.monotonic()
        return self._users

    def forget(self) -> None:
        """Read them again next time: someone was added, deactivated or activated here."""
        self._read_at = -self.ttl
