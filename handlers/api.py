"""The JSON API of CONTRACT §3: tokens, the caller, users and parcels."""

from __future__ import annotations

from typing import Any

from auth import passwords, tokens
from handlers.base import ApiError, ApiHandler, Refused
from models import geo, locations, parcels, users
from models.access import ROLES, User, can_assign, can_create_users, may_set_status


class TokenHandler(ApiHandler):
    """POST /api/token/: email and password → access and refresh tokens."""

    def check_xsrf_cookie(self) -> None:
        pass  # credentials in the body, no ambient cookie: nothing to forge

    async def post(self) -> None:
        body = self.json_body()
        try:
            user = await self.check_login(body.get("email"), body.get("password"))
        except Refused as e:
            retry = {"Retry-After": str(e.retry_after)} if e.retry_after else {}
            raise ApiError(e.status, e.message, retry) from None
        secret = self.config.secret_key
        self.send({
            "access": tokens.issue(user, "access", self.config.access_token_ttl, secret),
            "refresh": tokens.issue(user, "refresh", self.config.refresh_token_ttl, secret),
        })


class RefreshHandler(ApiHandler):
    """POST /api/token/refresh/: a refresh token → a new access token."""

    def check_xsrf_cookie(self) -> None:
        pass

    async def post(self) -> None:
        refresh = self.json_body().get("refresh")
        if not isinstance(refresh, str):
            raise ApiError(401, "a refresh token is required")
        try:
            claimed = tokens.verify(refresh, "refresh", self.config.secret_key)
        except tokens.TokenError as e:
            raise ApiError(401, str(e)) from None
        user = await users.get_user(self.db, claimed.id)
        if user is None:
            raise ApiError(401, "the token's user no longer exists")
        self.send({"access": tokens.issue(user, "access", self.config.access_token_ttl, self.config.secret_key)})


class SocketTokenHandler(ApiHandler):
    """GET /api/token/ws/: a short-lived access token for a page's tracking socket."""

    async def get(self) -> None:
        if self.get_signed_cookie("user") is None or self.current_user is None:
            raise ApiError(401, "log in to get a socket token")
        token = tokens.issue(self.current_user, "access", self.config.ws_token_ttl, self.config.secret_key)
        self.send({"access": token})


class MeHandler(ApiHandler):
    async def get(self) -> None:
        self.send(self.require_user().public())


class UsersHandler(ApiHandler):
    """POST /api/users/: a dispatcher creates an account."""

    async def post(self) -> None:
        if not can_create_users(self.require_user()):
            raise ApiError(403, "only a dispatcher can create users")
        body = self.json_body()
        email, password, role, name = (body.get(k) for k in ("email", "password", "role", "name"))
        if not isinstance(email, str) or "@" not in email or len(email) > 254:
            raise ApiError(400, "email must be an email address")
        if not isinstance(password, str) or (problem := passwords.check_length(password)):
            raise ApiError(400, problem if isinstance(password, str) else "password is required")
        if role not in ROLES:
            raise ApiError(400, f"role must be one of {', '.join(ROLES)}")
        if name is not None and (not isinstance(name, str) or len(name) > 100):
            raise ApiError(400, "name must be text of at most 100 characters")
        password_hash = await passwords.hash_password(password, self.config.bcrypt_rounds)
        try:
            user = await users.create_user(
                self.db, email=email, password_hash=password_hash, role=role, name=name or ""
            )
        except users.EmailTaken:
            raise ApiError(409, "a user with that email exists already") from None
        self.send(user.public(), status=201)


class ParcelsHandler(ApiHandler):
    """GET: the parcels the caller may see. POST: a client or dispatcher creates one."""

    async def get(self) -> None:
        found = await parcels.list_visible(self.db, self.require_user())
        self.send([parcels.public(p) for p in found])

    async def post(self) -> None:
        user = self.require_user()
        body = self.json_body()
        if user.role == "client":
            owner_id = user.id
        elif user.role == "dispatcher":
            owner_id = body.get("owner_id")
            if isinstance(owner_id, bool) or not isinstance(owner_id, int):
                raise ApiError(400, "owner_id (a client's id) is required")
            owner = await users.get_user(self.db, owner_id)
            if owner is None or owner.role != "client":
                raise ApiError(400, "owner_id must be a client's id")
        else:
            raise ApiError(403, "drivers cannot create parcels")
        try:
            pickup = geo.point(body.get("pickup"), "pickup")
            destination = geo.point(body.get("destination"), "destination")
        except geo.InvalidLocation as e:
            raise ApiError(400, str(e)) from None
        parcel = await parcels.create_parcel(self.db, owner_id=owner_id, pickup=pickup, destination=destination)
        self.send(parcels.public(parcel), status=201)


class ParcelHandlerBase(ApiHandler):
    async def visible_parcel(self, parcel_id: str) -> tuple[User, dict[str, Any]]:
        """The caller and the parcel; 404 alike for missing and not-yours, so ids cannot be probed."""
        user = self.require_user()
        parcel = await self.parcel_if_visible(parcel_id)
        if parcel is None:
            raise ApiError(404, "no such parcel")
        return user, parcel


class ParcelHandler(ParcelHandlerBase):
    async def get(self, parcel_id: str) -> None:
        _, parcel = await self.visible_parcel(parcel_id)
        self.send(parcels.public(parcel))


class AssignHandler(ParcelHandlerBase):
    """POST /api/parcels/<id>/assign/: a dispatcher assigns (or reassigns) a driver."""

    async def post(self, parcel_id: str) -> None:
        user, parcel = await self.visible_parcel(parcel_id)
        if not can_assign(user):
            raise ApiError(403, "only a dispatcher can assign drivers")
        try:
            updated = await self.assign_driver(parcel, self.json_body().get("driver_id"))
        except Refused as e:
            raise ApiError(e.status, e.message) from None
        self.send(parcels.public(updated))


class StatusHandler(ParcelHandlerBase):
    """POST /api/parcels/<id>/status/: its driver or a dispatcher moves it on; the owner may cancel."""

    async def post(self, parcel_id: str) -> None:
        user, parcel = await self.visible_parcel(parcel_id)
        status = self.json_body().get("status")
        if status not in parcels.STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(parcels.STATUSES)}")
        if not may_set_status(user, parcel, status):
            raise ApiError(403, "you may not change this parcel's status")
        try:
            updated = await parcels.set_status(self.db, parcel["_id"], status)
        except parcels.TransitionRefused as e:
            raise ApiError(409, str(e)) from None
        self.hub.parcel_changed(updated)
        self.send(parcels.public(updated))


class LocationsHandler(ParcelHandlerBase):
    async def get(self, parcel_id: str) -> None:
        _, parcel = await self.visible_parcel(parcel_id)
        self.send({"locations": await locations.history(self.db, parcel["_id"])})
