"""HS256 JSON Web Tokens, one scheme for every type, no type passing for another.

| type | issued by | accepted by | lifetime |
|---|---|---|---|
| `access` | `POST /api/token/`, `/api/token/refresh/` | the API, the sockets | ACCESS_TOKEN_TTL |
| `refresh` | `POST /api/token/` | `/api/token/refresh/` only | REFRESH_TOKEN_TTL |
| `socket` | `GET /api/token/ws/` (a page's login cookie) | the sockets only | 60 s |
| `share` | none now (short links are made instead) | `/t/<token>`, its parcel's socket | SHARE_LINK_TTL |

The algorithm is pinned on decode, so `alg: none` or another algorithm is refused;
`exp` is required. A user's token carries `ver`, the user's session version: logging
out, a new password or a new role moves the version on, and every token issued
before stops working (docs/security.md). A signed share token names no user: `pid` is its parcel and
`sv` the parcel's share version when it was made (models/shares.py).

A share link's token is now short and opaque (`new_share_token`: 128 random bits, 22
URL-safe characters) and names nothing itself: models/shares.py stores what it names.
It has no dot, so it can never be mistaken for one of the signed tokens above.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass

import jwt

from models.access import ROLES, User
from models.db import MAX_ID

ALGORITHM = "HS256"
SHORT_SHARE = re.compile(r"[A-Za-z0-9_-]{16,64}")  # CONTRACT §7: 16–64 URL-safe characters
SHORT_SHARE_BYTES = 16  # 128 bits (the contract asks at least 96)
USER_TYPES = ("access", "refresh", "socket")
SOCKET_TYPES = ("access", "socket")  # what a socket accepts from a user


class TokenError(ValueError):
    """The token is missing, malformed, tampered with, expired or of the wrong type."""


@dataclass(frozen=True)
class Claimed:
    """Who a valid token says its bearer is; still to be checked against the stored user."""

    id: int
    role: str
    version: int
    type: str

    def matches(self, user: User | None) -> bool:
        """Is the stored user still the one the token was issued to (same role, same session), and active?"""
        return user is not None and user.role == self.role and user.session == self.version and user.active


@dataclass(frozen=True)
class Shared:
    """What a valid share token names: one parcel, at one share version."""

    parcel_id: int
    version: int


@dataclass(frozen=True)
class ShortShare:
    """A short share token, still to be looked up (models/shares.py) to know what it names."""

    token: str


def new_share_token() -> str:
    """A new share link's token: opaque, random, short enough for a text message."""
    return secrets.token_urlsafe(SHORT_SHARE_BYTES)


def is_short_share(token: str | None) -> bool:
    """Is this a short share token by its form (whether one was made is the database's to say)?"""
    return bool(token) and SHORT_SHARE.fullmatch(token) is not None


def issue(user: User, token_type: str, ttl: int, secret: str) -> str:
    if token_type not in USER_TYPES:
        raise ValueError(f"not a user token type: {token_type!r}")
    return _encode({"sub": str(user.id), "role": user.role, "ver": user.session, "type": token_type}, ttl, secret)


def verify(token: str | None, accepted: str | Collection[str], secret: str) -> Claimed:
    """What a valid token of an accepted type claims."""
    return _claimed(_decode(token, secret), (accepted,) if isinstance(accepted, str) else tuple(accepted))


def verify_socket(token: str | None, secret: str) -> Claimed | Shared | ShortShare:
    """What a token a socket was opened with names: a user (an access or socket token), a
    signed share link's parcel, or a short share token to look up; decoded once (a
    handshake's costliest step after the database)."""
    if is_short_share(token):
        return ShortShare(token)
    claims = _decode(token, secret)
    return _shared(claims) if claims.get("type") == "share" else _claimed(claims, SOCKET_TYPES)


def _claimed(claims: dict, accepted: tuple[str, ...]) -> Claimed:
    if claims.get("type") not in accepted:
        raise TokenError(f"this is not {_a(accepted[0])} {accepted[0]} token")
    sub, version = claims.get("sub"), claims.get("ver", 0)
    if not isinstance(sub, str) or not sub.isascii() or not sub.isdigit() or not 0 < int(sub) <= MAX_ID:
        raise TokenError("the token is not valid")
    if claims.get("role") not in ROLES or isinstance(version, bool) or not isinstance(version, int):
        raise TokenError("the token is not valid")
    return Claimed(int(sub), claims["role"], version, claims["type"])


def issue_share(parcel_id: int, version: int, expires_at: int, secret: str) -> str:
    """A signed share token for one parcel, valid until `expires_at` (seconds since the epoch).
    The API makes short ones now (`new_share_token`); this is kept for the tests of the old kind."""
    return _encode({"sub": f"parcel:{parcel_id}", "pid": parcel_id, "sv": version, "type": "share"},
                   expires_at - int(time.time()), secret)


def verify_share(token: str | None, secret: str) -> Shared:
    """The parcel a valid share token names (whether its links were revoked since is for the caller)."""
    return _shared(_decode(token, secret))


def _shared(claims: dict) -> Shared:
    parcel_id, version = claims.get("pid"), claims.get("sv")
    if claims.get("type") != "share":
        raise TokenError("this is not a share token")
    for value in (parcel_id, version):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
            raise TokenError("the token is not valid")
    return Shared(parcel_id, version)


def _encode(claims: dict, ttl: int, secret: str) -> str:
    now = int(time.time())
    return jwt.encode({**claims, "iat": now, "exp": now + ttl, "jti": uuid.uuid4().hex}, secret, algorithm=ALGORITHM)


def _decode(token: str | None, secret: str) -> dict:
    if not token:
        raise TokenError("a token is required")
    try:
        return jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "iat", "sub", "type"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.InvalidTokenError:
        raise TokenError("the token is not valid") from None


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
