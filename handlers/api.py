"""The JSON API (docs/protocol.md, "Identity", "Parcels and who sees them"): tokens, the caller, users and parcels."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from auth import passwords, tokens
from handlers.base import LOGIN_COOKIE, ApiHandler, Refused
from models import geo, intake, locations, parcels, shares, users
from models.access import (
    ROLES,
    User,
    can_assign,
    can_create_parcels,
    can_manage_users,
    can_share,
    may_drive,
    may_own_parcels,
    may_set_status,
    names_owner,
)
from models.db import MAX_ID, iso, json_id, parse_iso, utcnow


class TokenHandler(ApiHandler):
    """POST /api/token/: email and password → access and refresh tokens."""

    def check_xsrf_cookie(self) -> None:
        pass  # credentials in the body, no ambient cookie: nothing to forge

    async def post(self) -> None:
        body = self.json_body()
        user = await self.check_login(body.get("email"), body.get("password"))
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
            raise Refused(401, "a refresh token is required")
        try:
            claimed = tokens.verify(refresh, "refresh", self.config.secret_key)
        except tokens.TokenError as e:
            raise Refused(401, str(e)) from None
        user = await users.get_user(self.db, claimed.id)
        if not claimed.matches(user):
            raise Refused(401, "the token is no longer valid; log in again")
        self.send({"access": tokens.issue(user, "access", self.config.access_token_ttl, self.config.secret_key)})


class SocketTokenHandler(ApiHandler):
    """GET /api/token/ws/: a short-lived access token for a page's tracking socket."""

    async def get(self) -> None:
        if self.get_signed_cookie(LOGIN_COOKIE) is None or self.current_user is None:
            raise Refused(401, "log in to get a socket token")
        token = tokens.issue(self.current_user, "socket", self.config.ws_token_ttl, self.config.secret_key)
        self.send({"access": token})


class MeHandler(ApiHandler):
    async def get(self) -> None:
        self.send(self.require_user().public())


class PasswordHandler(ApiHandler):
    """POST /api/me/password/: the caller's current and new password; every earlier session ends."""

    async def post(self) -> None:
        user = self.require_user()
        body = self.json_body()
        await self.check_login(user.email, body.get("password"))
        new = body.get("new_password")
        if not isinstance(new, str) or (problem := passwords.check_length(new)):
            raise Refused(400, problem if isinstance(new, str) else "new_password is required")
        password_hash = await passwords.hash_password(new, self.config.bcrypt_rounds)
        updated = await users.set_password(self.db, user.id, password_hash)
        self.hub.sessions_ended(user.id)
        self.send(updated.public())


class RoleHandler(ApiHandler):
    """POST /api/users/<id>/role/: a dispatcher changes someone's role; their sessions end."""

    async def post(self, user_id: str) -> None:
        if not can_manage_users(self.require_user()):
            raise Refused(403, "only a dispatcher can change roles")
        role = self.json_body().get("role")
        if role not in ROLES:
            raise Refused(400, f"role must be one of {', '.join(ROLES)}")
        updated = await users.set_role(self.db, int(user_id), role)
        if updated is None:
            raise Refused(404, "no such user")
        self.hub.sessions_ended(updated.id)
        self.send(updated.public())


class UsersHandler(ApiHandler):
    """POST /api/users/: a dispatcher creates an account."""

    async def post(self) -> None:
        if not can_manage_users(self.require_user()):
            raise Refused(403, "only a dispatcher can create users")
        body = self.json_body()
        account, problems = users.check_account(*(body.get(k) for k in ("email", "password", "role", "name")))
        if problems:
            raise Refused(400, next(iter(problems.values())))
        password_hash = await passwords.hash_password(account["password"], self.config.bcrypt_rounds)
        try:
            user = await users.create_user(self.db, email=account["email"], password_hash=password_hash,
                                           role=account["role"], name=account["name"])
        except users.EmailTaken:
            raise Refused(409, users.EMAIL_TAKEN) from None
        self.send(user.public(), status=201)


class ParcelsHandler(ApiHandler):
    """GET: the parcels the caller may see. POST: a client or dispatcher creates one."""

    async def get(self) -> None:
        user = self.require_user()
        limit = self.int_argument("limit", 100, 1, parcels.MAX_PAGE)
        before = self.int_argument("before", None, 1, MAX_ID)
        page = await parcels.list_visible(self.db, user, limit=limit, before=before, statuses=self.statuses())
        await parcels.with_stops_before(self.db, page.parcels)
        if page.next_before is not None:
            self.set_next_link(before=page.next_before)
        self.send([parcels.public(p) for p in page.parcels])

    def statuses(self) -> tuple[str, ...] | None:
        """`status=a,b` or `active=1` (not both); None: every status."""
        raw = self.get_query_argument("status", "").strip()
        active = self.get_query_argument("active", "").strip()
        if active and active not in ("1", "true"):
            raise Refused(400, "active must be 1")
        if raw and active:
            raise Refused(400, "give status or active, not both")
        if active:
            return parcels.ACTIVE
        if not raw:
            return None
        wanted = tuple(dict.fromkeys(s.strip() for s in raw.split(",")))
        if unknown := [s for s in wanted if s not in parcels.STATUSES]:
            raise Refused(400, f"unknown status {unknown[0][:40]!r}; one of {', '.join(parcels.STATUSES)}")
        return wanted

    async def post(self) -> None:
        user = self.require_user()
        body = self.json_body()
        if not can_create_parcels(user):
            raise Refused(403, "only clients and dispatchers can create parcels")
        owner_id = user.id
        if names_owner(user):
            named = body.get("owner_id")
            if isinstance(named, bool) or not isinstance(named, int):
                raise Refused(400, "owner_id (a client's id) is required")
            owner_id = json_id(named)
            if not may_own_parcels(await users.get_user(self.db, owner_id) if owner_id else None):
                raise Refused(400, "owner_id must be a client's id")
        try:
            pickup = geo.point(body.get("pickup"), "pickup")
            destination = geo.point(body.get("destination"), "destination")
            extras = intake.extras(body)  # recipient, note, window (docs/protocol.md, "Creating parcels")
        except geo.InvalidLocation as e:
            raise Refused(400, str(e)) from None
        except intake.InvalidField as e:
            raise Refused(400, e.for_json()) from None
        parcel = await parcels.create_parcel(self.db, owner_id=owner_id, pickup=pickup, destination=destination,
                                             **extras)
        self.application.events.created(parcel)
        self.send(parcels.public(parcel), status=201)


class ParcelHandlerBase(ApiHandler):
    async def caller_and_parcel(self, parcel_id: str) -> tuple[User, dict[str, Any]]:
        """The caller and the parcel; 404 alike for missing and not-yours, so ids cannot be probed."""
        user = self.require_user()
        parcel = await self.parcel_if_visible(parcel_id)
        if parcel is None:
            raise Refused(404, "no such parcel")
        return user, parcel


class ParcelHandler(ParcelHandlerBase):
    async def get(self, parcel_id: str) -> None:
        _, parcel = await self.caller_and_parcel(parcel_id)
        await parcels.with_stops_before(self.db, [parcel])
        self.send(parcels.public(parcel))


class AssignHandler(ParcelHandlerBase):
    """POST /api/parcels/<id>/assign/: a dispatcher assigns (or reassigns) a driver."""

    async def post(self, parcel_id: str) -> None:
        user, parcel = await self.caller_and_parcel(parcel_id)
        if not can_assign(user):
            raise Refused(403, "only a dispatcher can assign drivers")
        driver_id = json_id(self.json_body().get("driver_id"))
        driver = await users.get_user(self.db, driver_id) if driver_id else None
        if not may_drive(driver):
            raise Refused(400, "driver_id must be a driver's id")
        updated = await self.assign(parcel, driver)
        self.send(parcels.public(updated))


class StatusHandler(ParcelHandlerBase):
    """POST /api/parcels/<id>/status/: its driver or a dispatcher moves it on; the owner may cancel."""

    async def post(self, parcel_id: str) -> None:
        user, parcel = await self.caller_and_parcel(parcel_id)
        body = self.json_body()
        status = body.get("status")
        if status not in parcels.STATUSES:
            raise Refused(400, f"status must be one of {', '.join(parcels.STATUSES)}")
        if not may_set_status(user, parcel, status):
            raise Refused(403, "you may not change this parcel's status")
        try:
            failed = parcels.failure(body.get("reason"), body.get("note")) if status == "failed" else None
            updated = await parcels.set_status(self.db, parcel["_id"], status, failed)
        except parcels.InvalidChange as e:
            raise Refused(400, str(e)) from None
        except parcels.TransitionRefused as e:
            raise Refused(409, str(e)) from None
        self.hub.parcel_changed(updated)
        self.send(parcels.public(updated))


class RouteHandler(ApiHandler):
    """PUT /api/drivers/<id>/route/: a dispatcher puts a driver's active parcels in an order."""

    async def put(self, driver_id: str) -> None:
        if not can_assign(self.require_user()):
            raise Refused(403, "only a dispatcher can order a driver's stops")
        driver = await users.get_user(self.db, int(driver_id))
        if not may_drive(driver):
            raise Refused(404, "no such driver")
        order = self.json_body().get("parcels")
        if not isinstance(order, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in order):
            raise Refused(400, "parcels must be a list of parcel ids")
        try:
            route = await parcels.set_route(self.db, driver.id, order)
        except parcels.InvalidChange as e:
            raise Refused(400, str(e)) from None
        self.hub.route_reordered(driver.id)
        self.send({"driver_id": driver.id, "parcels": [doc["_id"] for doc in route]})


class ShareHandler(ParcelHandlerBase):
    """POST /api/parcels/<id>/share/ makes a share link; DELETE revokes every link of the parcel."""

    async def shareable(self, parcel_id: str) -> dict[str, Any]:
        user, parcel = await self.caller_and_parcel(parcel_id)
        if not can_share(user, parcel):
            raise Refused(403, "only the parcel's owner or a dispatcher can share it")
        return parcel

    async def post(self, parcel_id: str) -> None:
        parcel = await self.shareable(parcel_id)
        expires = shares.expiry(parcel, utcnow(), self.config.share_link_ttl)
        if expires is None:
            raise Refused(409, "this parcel finished more than an hour ago; it can no longer be shared")
        token = tokens.new_share_token()
        await shares.store(self.db, token, parcel, expires, utcnow())
        self.send({"url": f"{self.request.protocol}://{self.request.host}/t/{token}", "token": token,
                   "expires_at": iso(expires)}, status=201)

    async def delete(self, parcel_id: str) -> None:
        parcel = await self.shareable(parcel_id)
        await shares.revoke(self.db, parcel["_id"])
        self.hub.links_revoked(parcel["_id"])
        self.set_status(204)
        self.finish()


class LocationsHandler(ParcelHandlerBase):
    """A parcel's sampled history, a page at a time (docs/protocol.md, "Lists that page")."""

    async def get(self, parcel_id: str) -> None:
        _, parcel = await self.caller_and_parcel(parcel_id)
        await self.send_history(parcel)

    async def send_history(self, parcel: dict[str, Any], earliest: datetime | None = None) -> None:
        """A page of the history, none of it before `earliest` when given."""
        limit = self.int_argument("limit", 1000, 1, locations.MAX_HISTORY_PAGE)
        since = self.since()
        if earliest is not None and (since is None or since < earliest):
            since = earliest - locations.MILLISECOND  # `since` is exclusive
        page = await locations.history(self.db, parcel, since=since, limit=limit)
        if page.next_since is not None:
            self.set_next_link(since=iso(page.next_since))
        self.send({"locations": page.locations})

    def since(self) -> datetime | None:
        raw = self.get_query_argument("since", "").strip()
        if not raw:
            return None
        try:
            return parse_iso(raw)
        except ValueError:
            raise Refused(400, "since must be an ISO 8601 timestamp, like 2026-01-08T10:15:30.123Z") from None


class SharedLocationsHandler(LocationsHandler):
    """`/t/<token>/locations`: the history for a share link's page, the link its only credential."""

    async def get(self, token: str) -> None:
        parcel = await self.shared_parcel(token)
        since = shares.position_since(parcel, utcnow())
        if since is None:  # not on its way to the recipient: no position, no path (CONTRACT §7)
            self.int_argument("limit", 1000, 1, locations.MAX_HISTORY_PAGE)
            self.since()  # the same 400s as when there is a history
            return self.send({"locations": []})
        await self.send_history(parcel, earliest=since)
