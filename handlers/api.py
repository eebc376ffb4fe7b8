"""The JSON API (docs/protocol.md, "Identity", "Parcels and who sees them"): tokens, the caller, users and parcels."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from auth import passwords, tokens
from handlers.base import LOGIN_COOKIE, ApiHandler, Refused
from handlers.openapi import (
    BEFORE,
    LINK,
    POSITIVE,
    SINCE,
    TEXT,
    TIME,
    Answer,
    array,
    described,
    limit,
    nullable,
    obj,
    query,
    ref,
)
from models import geo, intake, locations, parcels, shares, users
from models.access import (
    READ,
    ROLES,
    WRITE,
    User,
    can_assign,
    can_change_recipient,
    can_create_parcels,
    can_manage_users,
    can_share,
    may_drive,
    may_own_parcels,
    may_set_status,
    names_owner,
    recipient_statuses,
)
from models.db import MAX_ID, iso, json_id, parse_iso, utcnow


class TokenHandler(ApiHandler):
    """POST /api/token/: email and password → access and refresh tokens."""

    def check_xsrf_cookie(self) -> None:
        pass  # credentials in the body, no ambient cookie: nothing to forge

    @described("Log in: an access and a refresh token", public=True,
               body=obj({"email": TEXT, "password": TEXT}, required=["email", "password"]),
               responses={200: ref("Tokens")}, errors=(401, 429))
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

    @described("A new access token for a refresh token", public=True,
               body=obj({"refresh": TEXT}, required=["refresh"]), responses={200: ref("AccessToken")}, errors=(401,))
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

    @described("A page's 60-second token for its tracking socket",
               "For the pages only: it takes the login cookie, which is not part of the API (401 without it).",
               public=True, responses={200: ref("AccessToken")}, errors=(401,))
    async def get(self) -> None:
        if self.get_signed_cookie(LOGIN_COOKIE) is None or self.current_user is None:
            raise Refused(401, "log in to get a socket token")
        token = tokens.issue(self.current_user, "socket", self.config.ws_token_ttl, self.config.secret_key)
        self.send({"access": token})


class MeHandler(ApiHandler):
    @described("The caller", responses={200: ref("User")})
    async def get(self) -> None:
        self.send(self.require_user().public())


class PasswordHandler(ApiHandler):
    """POST /api/me/password/: the caller's current and new password; every earlier session ends."""

    @described("Change the caller's password; every earlier session ends",
               body=obj({"password": TEXT, "new_password": {"type": "string", "minLength": 8}},
                        required=["password", "new_password"]),
               responses={200: ref("User")}, errors=(429,))
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

    @described("Change someone's role (dispatchers); their sessions end",
               body=obj({"role": {"enum": list(ROLES)}}, required=["role"]), responses={200: ref("User")},
               errors=(403, 404))
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

    @described("Add a person (dispatchers)",
               body=obj({"email": {"type": "string", "format": "email", "maxLength": users.MAX_EMAIL},
                         "password": {"type": "string", "minLength": 8}, "role": {"enum": list(ROLES)},
                         "name": {"type": "string", "maxLength": users.MAX_NAME}},
                        required=["email", "password", "role"]),
               responses={201: ref("User")}, errors=(403, 409))
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

    key_scopes = {"GET": READ, "POST": WRITE}

    @described("The parcels the caller may see, newest first, a page at a time",
               parameters=[limit(100, parcels.MAX_PAGE), BEFORE,
                           query("status", {"type": "string", "pattern": rf"^({'|'.join(parcels.STATUSES)})"
                                            rf"(,({'|'.join(parcels.STATUSES)}))*$"},
                                 "only these statuses, separated by commas"),
                           query("active", {"enum": ["1", "true"]}, "only the active ones (not with status)")],
               responses={200: Answer(array(ref("Parcel")), headers=LINK)})
    async def get(self) -> None:
        user = self.require_user()
        limit = self.int_argument("limit", 100, 1, parcels.MAX_PAGE)
        before = self.int_argument("before", None, 1, MAX_ID)
        page = await parcels.list_visible(self.db, user, limit=limit, before=before, statuses=self.statuses())
        await parcels.stored_stops_before(self.db, page.parcels)
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

    @described("Create a parcel (a client for itself; a dispatcher names the owner)", body=ref("NewParcel"),
               responses={201: ref("Parcel")}, errors=(403,))
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
    key_scopes = {"GET": READ, "PATCH": WRITE}

    @described("A parcel", responses={200: ref("Parcel")}, errors=(404,))
    async def get(self, parcel_id: str) -> None:
        _, parcel = await self.caller_and_parcel(parcel_id)
        await parcels.with_stops_before(self.db, [parcel])
        self.send(parcels.public(parcel))

    @described("Change a parcel's recipient: its owner before pickup, a dispatcher at any time",
               "A merge patch of `recipient`: a field given replaces the stored one, a field given as null "
               "clears it, a field left out stays; `\"recipient\": null` removes the recipient.",
               body=obj({"recipient": nullable(ref("RecipientIn"))}, required=["recipient"], closed=True),
               responses={200: ref("Parcel")}, errors=(403, 404, 409))
    async def patch(self, parcel_id: str) -> None:
        """docs/protocol.md, "The recipient"."""
        user, parcel = await self.caller_and_parcel(parcel_id)
        if not can_change_recipient(user, parcel):
            raise Refused(403, "only the parcel's owner or a dispatcher can change its recipient")
        allowed = recipient_statuses(user)
        if allowed is not None and parcel["status"] not in allowed:
            raise Refused(409, "the parcel has been picked up: only a dispatcher can change its recipient now")
        body = self.json_body()
        if set(body) != {"recipient"}:
            raise Refused(400, 'the body must be {"recipient": {...}}: only the recipient is changed here')
        given = body["recipient"]
        if isinstance(given, dict):  # a merge patch: the fields not given stay as they are
            given = {**(parcel.get("recipient") or {}), **given}
        try:
            recipient = intake.recipient_object(given)
            updated = await parcels.set_recipient(self.db, parcel["_id"], recipient, allowed)
        except intake.InvalidField as e:
            raise Refused(400, e.for_json()) from None
        except parcels.TransitionRefused as e:
            raise Refused(409, str(e)) from None
        await parcels.with_stops_before(self.db, [updated])
        self.send(parcels.public(updated))


class AssignHandler(ParcelHandlerBase):
    """POST /api/parcels/<id>/assign/: a dispatcher assigns (or reassigns) a driver."""

    @described("Assign (or reassign) a driver (dispatchers)", body=obj({"driver_id": POSITIVE}, required=["driver_id"]),
               responses={200: ref("Parcel")}, errors=(403, 404, 409))
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

    key_scopes = {"POST": WRITE}  # to cancel only (models.access.may_set_status)

    @described("Move a parcel on: its driver, a dispatcher; its owner may cancel it before pickup",
               body=obj({"status": {"enum": list(parcels.STATUSES)},
                         "reason": {"enum": list(parcels.FAILURE_REASONS), "description": "with failed"},
                         "note": {"type": "string", "maxLength": parcels.MAX_FAILURE_NOTE,
                                  "description": "with failed"}}, required=["status"]),
               responses={200: ref("Parcel")}, errors=(403, 404, 409))
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

    @described("Put a driver's active parcels in an order (dispatchers)",
               body=obj({"parcels": array(POSITIVE)}, required=["parcels"]),
               responses={200: obj({"driver_id": POSITIVE, "parcels": array(POSITIVE)},
                                   required=["driver_id", "parcels"])}, errors=(403, 404))
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

    @described("Make a share link (its owner, dispatchers)",
               responses={201: obj({"url": TEXT, "token": TEXT, "expires_at": TIME},
                                   required=["url", "token", "expires_at"])}, errors=(403, 404, 409))
    async def post(self, parcel_id: str) -> None:
        parcel = await self.shareable(parcel_id)
        expires = shares.expiry(parcel, utcnow(), self.config.share_link_ttl)
        if expires is None:
            raise Refused(409, "this parcel finished more than an hour ago; it can no longer be shared")
        token = tokens.new_share_token()
        await shares.store(self.db, token, parcel, expires, utcnow())
        self.send({"url": f"{self.request.protocol}://{self.request.host}/t/{token}", "token": token,
                   "expires_at": iso(expires)}, status=201)

    @described("Revoke every share link of the parcel", responses={204: None}, errors=(403, 404))
    async def delete(self, parcel_id: str) -> None:
        parcel = await self.shareable(parcel_id)
        await shares.revoke(self.db, parcel["_id"])
        self.hub.links_revoked(parcel["_id"])
        self.set_status(204)
        self.finish()


class LocationsHandler(ParcelHandlerBase):
    """A parcel's sampled history, a page at a time (docs/protocol.md, "Lists that page")."""

    key_scopes = {"GET": READ}

    @described("A parcel's sampled history, oldest first, a page at a time",
               parameters=[limit(1000, locations.MAX_HISTORY_PAGE), SINCE],
               responses={200: Answer(ref("History"), headers=LINK)}, errors=(404,))
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

    @described("The history a share link shows (the link is the credential)",
               "Empty until the parcel is on its way to the recipient (docs/protocol.md, \"Share links\").",
               public=True, parameters=[limit(1000, locations.MAX_HISTORY_PAGE), SINCE],
               responses={200: Answer(ref("History"), headers=LINK)}, errors=(404,))
    async def get(self, token: str) -> None:
        parcel = await self.shared_parcel(token)
        since = shares.position_since(parcel, utcnow())
        if since is None:  # not on its way to the recipient: no position, no path (CONTRACT §7)
            self.int_argument("limit", 1000, 1, locations.MAX_HISTORY_PAGE)
            self.since()  # the same 400s as when there is a history
            return self.send({"locations": []})
        await self.send_history(parcel, earliest=since)
