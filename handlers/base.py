"""The handlers' common ground: who is asking, rendering pages, JSON in and out.

`BaseHandler.prepare()` sets `current_user` from a Bearer token (API clients) or
the signed login cookie (browsers). `ApiHandler` answers every error as
`{"error": ...}` and skips the XSRF check only for Bearer-authenticated calls,
which a browser cannot forge.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pymongo
import tornado.web
from tornado.httputil import HTTPServerRequest

from auth import login, tokens
from models import keys, parcels, shares, users
from models.access import User, can_view, key_refusal
from models.db import Database, parse_id, unreachable, utcnow
from realtime.hub import Hub
from settings import MAX_API_BODY_SIZE, STREAMED_BODY_LIMIT, Settings

LOGIN_COOKIE = "user"
# A share link's path (/t/<token>[/locations]) and an unsubscribe link's (/u/<token>): tokens in paths.
TOKEN_PATH = re.compile(r"^/([tu])/[^/]+")


def loggable_path(path: str) -> str:
    """A request's path as the logs may show it: a link's token is a credential (docs/security.md)."""
    return TOKEN_PATH.sub(r"/\1/[token]", path, count=1)


class Refused(tornado.web.HTTPError):
    """A request the rules refuse: a status and a message for the person. The one
    exception for it: the API's `write_error` renders it as `{"error": ...}`, the pages'
    as a page (with `Retry-After` when there is a wait)."""

    def __init__(self, status: int, message: str, retry_after: int = 0) -> None:
        super().__init__(status)
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class BaseHandler(tornado.web.RequestHandler):
    current_user: User | None

    @property
    def db(self) -> Database:
        return self.application.db

    @property
    def hub(self) -> Hub:
        return self.application.hub

    @property
    def config(self) -> Settings:
        return self.application.config

    credentials_required = True  # without a token or a login cookie the answer is 401

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")

    def _request_summary(self) -> str:
        # Tornado's error and warning lines name `request.uri`: its query, and a share link's path, hold tokens.
        return f"{self.request.method} {loggable_path(self.request.path)} ({self.request.remote_ip})"

    def check_xsrf_cookie(self) -> None:
        """XSRF guards what a browser's ambient login cookie could be made to do. A Bearer
        token is never sent on its own; a request with no credentials at all has nothing to
        forge and gets its 401 (never a 403 first)."""
        if "Authorization" in self.request.headers:
            return
        if self.credentials_required and self.get_cookie(LOGIN_COOKIE) is None:
            return
        super().check_xsrf_cookie()

    async def _execute(self, *args: Any, **kwargs: Any) -> None:
        # Every database call of a request shares one deadline, so a database that is down
        # or frozen costs a request DATABASE_DEADLINE, not PyMongo's 30 s (then 503, below).
        with pymongo.timeout(self.config.database_deadline):
            await super()._execute(*args, **kwargs)

    def _handle_request_exception(self, e: BaseException) -> None:
        # The one place a database that does not answer becomes an answer: 503 with a message.
        if not unreachable(e):
            return super()._handle_request_exception(e)
        self.application.hub.metrics.database_errors.inc()
        try:  # raised, so that Tornado's handling (which reads sys.exc_info) sees the refusal
            raise Refused(503, "the database is unavailable", retry_after=5) from e
        except Refused as refusal:
            super()._handle_request_exception(refusal)

    # What an API key's caller may do here: the scope each HTTP method needs (docs/protocol.md,
    # "API keys"). A method not named is closed to keys (403); people are not concerned.
    key_scopes: dict[str, str] = {}

    async def prepare(self) -> None:
        apply_forwarded(self.request, self.config.trusted_proxies)
        self.token_error: str | None = None
        self.current_user = await self._authenticate()
        user = self.current_user
        if user is not None and (refusal := key_refusal(user, self.key_scopes.get(self.request.method))):
            raise Refused(403, refusal)

    async def _authenticate(self) -> User | None:
        """The user of a Bearer access token or of the login cookie, if still theirs (docs/security.md)."""
        header = self.request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                self.token_error = "the Authorization header must be 'Bearer <access token>'"
                return None
            if keys.looks_like_key(token.strip()):
                return await self._key_caller(token.strip())
            try:
                claimed = tokens.verify(token.strip(), "access", self.config.secret_key)
            except tokens.TokenError as e:
                self.token_error = str(e)
                return None
            user = await users.get_user(self.db, claimed.id)
            if not claimed.matches(user):
                self.token_error = "the token is no longer valid; log in again"
                return None
            return user
        cookie = self.get_signed_cookie(LOGIN_COOKIE, max_age_days=self.config.refresh_token_ttl / 86400)
        user_id, _, session = (cookie or b"").decode("ascii", "replace").partition(":")
        if parse_id(user_id) is None or not session.isdigit():
            return None
        user = await users.get_user(self.db, int(user_id))
        return user if user is not None and user.session == int(session) else None

    async def _key_caller(self, key: str) -> User | None:
        """Who an API key acts as (models/keys.py); its use noted in the background."""
        try:
            doc = await keys.authenticate(self.db, key)
        except keys.KeyRefused as e:
            self.token_error = str(e)
            return None
        keys.used(self.db, doc, utcnow())
        return keys.caller(doc)

    async def check_login(self, email: Any, password: Any) -> User:
        """The user these credentials name (see auth.login), or `Refused`."""
        try:
            return await login.check_login(self.db, self.application.login_throttle, self.request.remote_ip or "",
                                           email, password, self.config.bcrypt_rounds)
        except login.LoginRefused as e:
            raise Refused(e.status, str(e), e.retry_after) from None

    async def parcel_if_visible(self, parcel_id: str) -> dict[str, Any] | None:
        """The parcel if the current user may see it, else None: missing and not-yours look alike."""
        parcel = await parcels.get_parcel(self.db, int(parcel_id))
        if parcel is None or self.current_user is None or not can_view(self.current_user, parcel):
            return None
        return parcel

    async def shared_parcel(self, token: str) -> dict[str, Any]:
        """The parcel a share link still shows; `Refused` 404 for an expired, revoked or forged one."""
        now = utcnow()
        shared: tokens.Shared | None = None
        if tokens.is_short_share(token):
            named = shares.names(await shares.get_link(self.db, token), now)
            shared = named and tokens.Shared(*named)
        else:  # a signed link made before the short ones (auth/tokens.py)
            try:
                shared = tokens.verify_share(token, self.config.secret_key)
            except tokens.TokenError:
                shared = None
        parcel = shared and await shares.resolve(self.db, shared, now)
        if parcel is None:
            raise Refused(404, shares.GONE)
        return parcel

    async def assign(self, parcel: dict[str, Any], driver: User) -> dict[str, Any]:
        """Assign (or reassign) the parcel to a driver and tell its subscribers; `Refused` 409
        for a finished parcel."""
        try:
            updated, previous = await parcels.assign_driver(self.db, parcel["_id"], driver.id)
        except parcels.TransitionRefused as e:
            raise Refused(409, str(e)) from None
        self.hub.parcel_changed(updated, previous_driver_id=previous,
                                status_changed=updated["status"] != parcel["status"])
        return updated

    def int_argument(self, name: str, default: int | None, low: int, high: int) -> int | None:
        """A whole-number query argument within [low, high]; `Refused` 400 otherwise."""
        raw = self.get_query_argument(name, "").strip()
        if not raw:
            return default
        if not re.fullmatch(r"[0-9]{1,20}", raw) or not low <= int(raw) <= high:
            raise Refused(400, f"{name} must be a whole number from {low} to {high}")
        return int(raw)

    def set_next_link(self, **changes: Any) -> None:
        """The RFC 8288 `Link` to the next page: this URL with some query arguments changed."""
        query = [(k, v) for k, v in parse_qsl(self.request.query, keep_blank_values=True) if k not in changes]
        query += [(k, str(v)) for k, v in changes.items()]
        url = f"{self.request.protocol}://{self.request.host}{self.request.path}?{urlencode(query)}"
        self.set_header("Link", f'<{url}>; rel="next"')

    def set_cookie(self, name: str, value: str | bytes, *args: Any, **kwargs: Any) -> None:
        """Every cookie sent over https is `Secure`: the login cookie and Tornado's `_xsrf` alike."""
        if self.request.protocol == "https":
            kwargs["secure"] = True
        super().set_cookie(name, value, *args, **kwargs)

    def set_login_cookie(self, user: User) -> None:
        self.set_signed_cookie(
            LOGIN_COOKIE, f"{user.id}:{user.session}",
            expires_days=self.config.refresh_token_ttl / 86400, httponly=True, samesite="Lax",
        )

    def render_page(self, template: str, **context: Any) -> None:
        """Render a Jinja2 template with what every page needs."""
        page = self.application.templates.get_template(template)
        self.finish(page.render(
            current_user=self.current_user,
            xsrf_form_html=self.xsrf_form_html,
            xsrf_token=self.xsrf_token.decode(),
            static_url=self.static_url,
            request=self.request,
            **context,
        ))


@tornado.web.stream_request_body
class ApiHandler(BaseHandler):
    """JSON endpoints: `{"error": ...}` for every failure.

    The body streams in, so one over MAX_API_BODY_SIZE gets a 413 however it arrives: at
    once when its Content-Length says so, and after it has been read (and dropped) when it
    comes in chunks, up to STREAMED_BODY_LIMIT (past that the server cuts the connection).
    A handler taking larger bodies (the CSV import) sets `max_body_size` and its message."""

    max_body_size = MAX_API_BODY_SIZE
    too_large = "the request body is too large"

    async def prepare(self) -> None:
        self._body: list[bytes] = []
        self._body_size = 0
        length = self.request.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_body_size:
            raise Refused(413, self.too_large)
        self.request.connection.set_max_body_size(STREAMED_BODY_LIMIT)
        await super().prepare()

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size <= self.max_body_size:
            self._body.append(chunk)

    def require_user(self) -> User:
        if self.current_user is None:
            raise Refused(401, self.token_error or "authentication is required")
        return self.current_user

    def raw_body(self) -> bytes:
        """The body as sent; `Refused` 413 when it was over `max_body_size`."""
        if self._body_size > self.max_body_size:
            raise Refused(413, self.too_large)
        return b"".join(self._body)

    def json_body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.raw_body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "the body is not valid JSON") from None
        except RecursionError:
            raise Refused(400, "the body is nested too deeply") from None
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object")
        return body

    def send(self, body: dict[str, Any] | list[Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        retry_after(self, exc)
        if isinstance(exc, Refused):
            reason = exc.message
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code < 500:
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        else:
            reason = self._reason.lower()
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="api"')
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": reason}))


class StaticFiles(tornado.web.StaticFileHandler):
    """The static files, with `nosniff`, and a 404 for a path no file can have (a NUL byte)."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if "\x00" in absolute_path:
            raise tornado.web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)


def apply_forwarded(request: HTTPServerRequest, trusted: tuple[IPv4Network | IPv6Network, ...]) -> None:
    """The client's address and scheme as a trusted proxy (TRUSTED_PROXIES) reports them.

    From anyone else `X-Forwarded-For`, `X-Real-IP` and `X-Forwarded-Proto` are ignored:
    a client could write them to get round the login throttle or into the log. Through
    proxies, the client is the nearest address in `X-Forwarded-For` that is not one."""
    if not trusted or not _within(request.remote_ip, trusted):
        return
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    client = next((h for h in reversed(hops) if not _within(h, trusted)), None)
    client = client or request.headers.get("X-Real-IP", "").strip() or None
    if client and _within(client, ()) is not None:
        request.remote_ip = client
    scheme = request.headers.get("X-Forwarded-Proto", "").strip().lower()
    if scheme in ("http", "https"):
        request.protocol = scheme


def _within(address: str | None, networks: tuple[IPv4Network | IPv6Network, ...]) -> bool | None:
    """Whether `address` lies in one of `networks`; None when it is not an address at all."""
    try:
        ip = ip_address((address or "").strip())
    except ValueError:
        return None
    return any(ip in network for network in networks)


def retry_after(handler: tornado.web.RequestHandler, exc: BaseException | None) -> None:
    """A refusal that names a wait tells the client when to come back."""
    if isinstance(exc, Refused) and exc.retry_after:
        handler.set_header("Retry-After", str(exc.retry_after))


class ApiNotFound(ApiHandler):
    async def prepare(self) -> None:
        raise Refused(404, "no such API endpoint")
