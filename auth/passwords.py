"""bcrypt password hashes, computed in a thread so a login never stalls the sockets, and off the
request's database deadline (models.db.off_the_clock): a busy bcrypt is not a database down."""

from __future__ import annotations

import asyncio

import bcrypt

from models.db import off_the_clock

MAX_PASSWORD_BYTES = 72  # bcrypt ignores (5.x: refuses) anything longer


def check_length(password: str) -> str | None:
    """Why a new password is not acceptable, or None."""
    if len(password) < 8:
        return "password must be at least 8 characters"
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return f"password must be at most {MAX_PASSWORD_BYTES} bytes"
    return None


def hash_password_sync(password: str, rounds: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


async def hash_password(password: str, rounds: int) -> str:
    return await off_the_clock(asyncio.get_running_loop().run_in_executor(None, hash_password_sync, password, rounds))


async def verify_password(password: str, password_hash: str | None, rounds: int) -> bool:
    """Check a password; with no hash (unknown email) spend the same time and say no."""
    encoded = password.encode()
    too_long = len(encoded) > MAX_PASSWORD_BYTES  # bcrypt would compare its first 72 bytes only
    target = (password_hash or _dummy_hash(rounds)).encode()
    ok = await off_the_clock(
        asyncio.get_running_loop().run_in_executor(None, bcrypt.checkpw, encoded[:MAX_PASSWORD_BYTES], target))
    return ok and password_hash is not None and not too_long


_DUMMIES: dict[int, str] = {}


def _dummy_hash(rounds: int) -> str:
    if rounds not in _DUMMIES:
        _DUMMIES[rounds] = hash_password_sync("not a real password", rounds)
    return _DUMMIES[rounds]
