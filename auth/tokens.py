"""HS256 JSON Web Tokens: access tokens (API, socket) and refresh tokens.

The algorithm is pinned on decode, so `alg: none` or another algorithm is refused;
`exp` is required; `type` keeps access and refresh tokens apart.
"""

from __future__ import annotations

import time
import uuid

import jwt

from models.access import ROLES, User

ALGORITHM = "HS256"


class TokenError(ValueError):
    """The token is missing, malformed, tampered with, expired or of the wrong type."""


def issue(user: User, token_type: str, ttl: int, secret: str) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user.id),
        "role": user.role,
        "type": token_type,
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(token: str | None, token_type: str, secret: str) -> User:
    """The user a valid token of `token_type` names (id and role only)."""
    if not token:
        raise TokenError("a token is required")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "iat", "sub", "type"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.InvalidTokenError:
        raise TokenError("the token is not valid") from None
    if claims.get("type") != token_type:
        raise TokenError(f"this is not {'an' if token_type == 'access' else 'a'} {token_type} token")
    try:
        user_id = int(claims["sub"])
    except (TypeError, ValueError):
        raise TokenError("the token is not valid") from None
    if claims.get("role") not in ROLES:
        raise TokenError("the token is not valid")
    return User(id=user_id, role=claims["role"])
