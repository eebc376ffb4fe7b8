"""Checking a login: the throttle, the user, the password; one rule for the API and the login page."""

from __future__ import annotations

from auth import passwords
from auth.throttle import LoginThrottle
from models import users
from models.access import User
from models.db import Database

DEACTIVATED = "this account is deactivated"


class LoginRefused(ValueError):
    """A login that does not go through: `status` 400, 401 or 429 (with `retry_after` seconds)."""

    def __init__(self, status: int, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


async def check_login(db: Database, throttle: LoginThrottle, address: str, email: object, password: object,
                      bcrypt_rounds: int) -> User:
    """The user these credentials name, or `LoginRefused`: one message for an unknown
    e-mail and a wrong password, a wait once `throttle` has seen too many failures, and
    DEACTIVATED for the right password of a deactivated account."""
    if not isinstance(email, str) or not isinstance(password, str) or not email.strip() or not password:
        raise LoginRefused(400, "email and password are required")
    wait = throttle.retry_after(address, email)
    if wait:
        raise LoginRefused(429, f"too many failed logins; try again in {wait} s", wait)
    found = await users.find_by_email(db, email)
    user, password_hash = found if found else (None, None)
    if not await passwords.verify_password(password, password_hash, bcrypt_rounds):
        throttle.failed(address, email)
        raise LoginRefused(401, "wrong email or password")
    throttle.succeeded(address, email)
    if not user.active:  # said only to whoever knows the password
        raise LoginRefused(401, DEACTIVATED)
    return user
