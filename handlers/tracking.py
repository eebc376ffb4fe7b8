"""The tracking WebSocket (docs/protocol.md, "The tracking socket"), and what every
socket of the product shares (`Socket`): authenticate, authorise, validate, and hand to
the hub.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo
import tornado.websocket
from pymongo.errors import PyMongoError
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from auth import tokens
from handlers.base import apply_forwarded
from models import lookups, parcels, shares
from models.access import VIEWER, User, can_send_location, can_view, link_viewer
from models.db import parse_id, unreachable, utcnow
from realtime import protocol
from realtime.frames import text_frame
from realtime.hub import Hub, ParcelState
from settings import WEBSOCKET_MAX_MESSAGE_SIZE as MAX_FRAME

log = logging.getLogger("parcel.tracking")

RATE_LIMIT = 10  # location messages
RATE_WINDOW = 1.0  # seconds
FLOOD_FACTOR = 3  # RATE_LIMIT times this many frames within RATE_WINDOW, refused ones included, close it (4429)

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429
CLOSE_TRY_LATER = 1013  # the database is unavailable: the page reconnects with backoff
CLOSE_TOO_SLOW = 1008  # policy violation: a subscriber that stopped reading
MAX_UNSENT = 1024 * 1024  # bytes waiting for one subscriber before it is closed
NOT_ALLOWED = "this parcel does not exist or you may not track it"
ENDED_MEANWHILE = ("your session has ended; log in again", shares.GONE)  # a user's, a share link's


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """A cross-origin page may connect only from ALLOWED_ORIGINS. (Tornado accepts the
    page's own origin, the same host whatever the scheme, before asking: TLS is often
    ended by a proxy in front.)"""
    return origin.strip().rstrip("/").lower() in allowed


class StrictProtocol(tornado.websocket.WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, but a peer that breaks it is told why before the
    connection goes (RFC 6455 §7.4.1): 1007 for text that is not UTF-8, 1002 for any other
    violation (reserved bits set, a fragmented or oversized control frame), where Tornado
    would drop the TCP connection without a close frame. A client's frames must be masked
    (RFC 6455 §5.1), which Tornado does not check: an unmasked one closes with 1002 too."""

    # "The next bytes read are a frame's header" lives in `_masked_frame`, an attribute
    # Tornado's __init__ creates and its reader never uses: a new attribute would grow every
    # socket's instance dict by about 1.5 KiB (README, "Performance").

    async def _receive_frame(self) -> None:
        self._masked_frame = True
        await super()._receive_frame()

    async def _read_bytes(self, n: int) -> bytes:
        data = await super()._read_bytes(n)
        if self._masked_frame:
            self._masked_frame = False
            if not data[1] & 0x80:
                self._abort()
                raise StreamClosedError()
        return data

    def _abort(self) -> None:
        if not self.server_terminated:
            self.close(1002, "protocol error")
        super()._abort()

    def _handle_message(self, opcode: int, data: bytes) -> Any:
        if opcode != 0x1 or self.client_terminated or self._frame_compressed:
            return super()._handle_message(opcode, data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.close(1007, "text frames must be UTF-8")
            super()._abort()
            return None
        self._message_bytes_in += len(data)
        return self._run_callback(self.handler.on_message, text)


class Socket(tornado.websocket.WebSocketHandler):
    """What every socket of the product shares: origin and frame rules, authentication,
    rate and socket limits, and the hub's side of a subscriber (`send_text`, `revoke`)."""

    # A socket's own fields live in slots: added to Tornado's already large instance dict,
    # they would grow every open socket by about 1.5 KiB (README, "Performance").
    __slots__ = ("user", "_counted", "_recent", "_mark", "parcel_id", "parcels")
    kind = "tracking"  # its label in /metrics and in the hub
    roles: tuple[str, ...] = ()  # who may open it (empty: anyone the parcel's rules allow)

    @property
    def hub(self) -> Hub:
        return self.application.hub

    def check_origin(self, origin: str) -> bool:
        # Tornado calls this only when the request has an Origin header (a browser).
        return origin_allowed(origin, self.application.config.allowed_origins)

    def get_compression_options(self) -> None:
        return None  # permessage-deflate costs about ten times the memory per socket

    def get_websocket_protocol(self) -> StrictProtocol | None:
        protocol = super().get_websocket_protocol()
        return None if protocol is None else StrictProtocol(self, False, protocol.params)

    def initialize(self) -> None:
        self.user: User | None = None
        self._counted: str | None = None  # the address this socket is counted under in `Limits`
        self._recent: deque[float] | None = None  # when its recent messages came (made at its first)
        self._mark = self.hub.session_mark()  # sessions that end from now on end this handshake too
        self.parcel_id: int | None = None  # a parcel's socket: its parcel
        self.parcels: list[int] = []  # a route socket: the driver's active parcels (the hub keeps it)

    def prepare(self) -> None:
        apply_forwarded(self.request, self.application.config.trusted_proxies)

    async def read(self, read: Awaitable[Any]) -> list[Any] | None:
        """A database read's result in a list of one (a read may answer None), or None once the
        socket has been closed with 1013 because the database did not answer within its deadline
        (or too many handshakes wait for it: models/lookups.py)."""
        try:
            with pymongo.timeout(self.application.config.database_deadline):
                return [await read]
        except lookups.Busy as e:
            self._reject(CLOSE_TRY_LATER, str(e))
            return None
        except PyMongoError as e:
            if not unreachable(e):
                raise
            self.hub.metrics.database_errors.inc()
            self._reject(CLOSE_TRY_LATER, "the database is unavailable; try again in a moment")
            return None

    def credentials(self) -> tokens.Claimed | tokens.Shared | tokens.ShortShare | None:
        """What the socket's token names; None once the socket has been closed for a bad one (4401)."""
        try:
            return tokens.verify_socket(self._argument("token"), self.application.config.secret_key)
        except tokens.TokenError as e:
            return self._reject(CLOSE_UNAUTHENTICATED, str(e))

    async def authenticate(self, claimed: tokens.Claimed | tokens.Shared | tokens.ShortShare | None) -> User | None:
        """The user `claimed` names, still in the same session and of this socket's roles;
        None once the socket has been closed for it (4401, 4403 or 1013)."""
        if claimed is None:
            return None
        if isinstance(claimed, tokens.Shared | tokens.ShortShare):
            return self._reject(CLOSE_UNAUTHENTICATED, "a share link opens only its parcel's tracking socket")
        user = self.hub.known_user(claimed.id)
        if user is None:
            found = await self.read(self.application.lookups.user(claimed.id))
            if found is None:
                return None
            user = found[0]
            if user is not None:
                self.hub.remember_user(user)
        if not claimed.matches(user):  # deleted, demoted, logged out, or a new password since
            return self._reject(CLOSE_UNAUTHENTICATED, "the token is no longer valid; log in again")
        if self.roles and user.role not in self.roles:
            return self._reject(CLOSE_FORBIDDEN, f"this socket is for {' and '.join(r + 's' for r in self.roles)}")
        return user

    async def admit(self, load: Callable[[User], Awaitable[Any]]) -> tuple[User, Any] | None:
        """Authenticate, read what the socket starts from (`load(user)`), and count it in;
        None once the socket has been closed for a reason (4401, 4403, 1013 or 4429)."""
        user = await self.authenticate(self.credentials())
        found = user and await self.read(load(user))
        if not found or not self.count_in(user):
            return None
        return user, found[0]

    def count_in(self, user: User) -> bool:
        """Count the socket under its user's and address's limits; False once refused (4429)."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return False  # the peer left while we looked things up
        if self.hub.ended_since(user.id, self._mark):  # while we looked things up
            self._reject(CLOSE_UNAUTHENTICATED, ENDED_MEANWHILE[user.role == VIEWER])
            return False
        address = self.request.remote_ip or ""
        if refused := self.application.limits.open(user.id, address):
            self._reject(CLOSE_TOO_MANY, refused)
            return False
        self._counted, self.user = address, user
        self._forget_request()
        return True

    def _forget_request(self) -> None:
        """Drop what the handshake needed and an open socket does not: its headers and query
        (the token among them), a few KiB per socket (README, "Performance")."""
        request = self.request
        request.headers = HTTPHeaders()
        request.query_arguments = request.arguments = {}
        request.uri, request.query = request.path, ""

    def on_message(self, message: str | bytes) -> None:
        if self.user is None or self.ws_connection is None or self.ws_connection.is_closing():
            return  # rejected or revoked: frames the peer sent before it saw our close are dropped
        self.hub.metrics.messages_by_kind[self.kind].inc()
        try:
            self._check_rate()  # before parsing: a refused frame counts too, and costs no parse
            if _frame_size(message) <= MAX_FRAME:
                return self.receive(protocol.parse_message(message))
            parsed = None  # only a location_batch may be bigger (docs/protocol.md)
            with contextlib.suppress(protocol.ProtocolError):
                parsed = protocol.parse_message(message)
            if parsed is None or parsed["type"] != "location_batch":
                return self.close(1009, "message too big")
            self.receive(parsed)
        except protocol.ProtocolError as e:
            if len(self._recent) >= FLOOD_FACTOR * RATE_LIMIT:
                return self._reject(CLOSE_TOO_MANY, f"too many messages: at most {RATE_LIMIT} a second")
            self.send_text(protocol.error(str(e)))

    def receive(self, message: dict[str, Any]) -> None:
        """A parsed message of a known type, within the rate limits (ProtocolError: refused)."""
        raise protocol.ProtocolError("this socket only receives")

    def _check_rate(self) -> None:
        now = time.monotonic()
        if self._recent is None:
            self._recent = deque()
        while self._recent and self._recent[0] <= now - RATE_WINDOW:
            self._recent.popleft()
        self._recent.append(now)  # refused or not: a flood's refusals close it (FLOOD_FACTOR)
        if len(self._recent) > RATE_LIMIT:
            raise protocol.ProtocolError(f"too many messages: at most {RATE_LIMIT} a second")
        if refused := self.application.limits.message(self.user.id):
            raise protocol.ProtocolError(refused)

    def on_close(self) -> None:
        if self._counted is not None:
            self.application.limits.close(self.user.id, self._counted)
            self._counted = None
        if self.user is not None:
            self.left()

    def left(self) -> None:
        """The socket closed: leave the hub."""
        self.hub.unsubscribe(self)

    def _argument(self, name: str) -> str:
        """A query argument ("" when absent); bytes that are not UTF-8 become U+FFFD and so fail validation."""
        values = self.request.query_arguments.get(name)
        return values[-1].decode("utf-8", "replace").strip() if values else ""

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Tornado's version logs the request's URI, and a socket's URI carries its token.
        log.error("uncaught exception on %s", self._request_summary(), exc_info=(typ, value, tb))

    def _request_summary(self) -> str:
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"  # the token is in the query

    # -- the hub's side (Subscriber) -----------------------------------------

    def send_text(self, text: str) -> None:
        self.send_frame(text_frame(text))

    def send_frame(self, frame: bytes) -> None:
        """Write a framed message (realtime/frames.py); a socket that has gone meanwhile is
        simply skipped, and one whose reader has fallen MAX_UNSENT behind is closed (1008)
        rather than kept in memory."""
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            return
        stream = connection.stream
        unsent = len(stream._write_buffer)  # Tornado keeps no public count of bytes not yet taken
        if unsent > MAX_UNSENT:
            log.info("closing a socket that stopped reading (%d bytes waiting)", unsent)
            self.close(CLOSE_TOO_SLOW, "you are not reading your messages")
            if self.user is not None:  # no more fan-out to it while its close is pending
                self.left()
            return
        try:
            stream.write(frame)  # its future swallows a closed stream's error
        except StreamClosedError:
            pass

    def revoke(self, message: str, code: int = CLOSE_FORBIDDEN) -> None:
        self._reject(code, message)

    def _reject(self, code: int, message: str) -> None:
        self.send_text(protocol.error(message))
        self.close(code, message[:120])


class TrackingSocket(Socket):
    """One parcel's socket: its driver sends, its owner, dispatchers and share-link viewers watch."""

    __slots__ = ()

    async def open(self) -> None:
        raw_id = self._argument("parcel_id")
        if not re.fullmatch(r"-?[0-9]+", raw_id):
            return self._reject(CLOSE_BAD_REQUEST, "parcel_id must be an integer")
        parcel_id = parse_id(raw_id)  # any other integer names no parcel
        claimed = self.credentials()
        known = None
        if isinstance(claimed, tokens.ShortShare):
            claimed = await self.look_up(claimed)
            if claimed is None:
                return
        if isinstance(claimed, tokens.Shared):
            user, parcel = await self.link(claimed, parcel_id)
        else:
            user = await self.authenticate(claimed)
            # No database read when the hub holds the parcel. Looked up after the await, so the
            # state cannot change (a status, the last subscriber leaving) before subscribe().
            known = self.hub.known(parcel_id) if user and parcel_id else None
            if known is not None:
                parcel = known.parcel()
            else:
                found = user and parcel_id and await self.read(self.application.lookups.parcel(parcel_id))
                parcel = found[0] if found else None
        if user is None or self.ws_connection is None or self.ws_connection.is_closing():
            return
        if parcel is None or not can_view(user, parcel):
            return self._reject(CLOSE_FORBIDDEN, NOT_ALLOWED)
        if not self.count_in(user):
            return
        self.parcel_id = parcel_id
        snapshot = self.hub.subscribe(self, parcel, loaded=known is None)
        self.send_text(protocol.subscribed(parcel_id, user.role, parcel["status"]))
        if snapshot:
            self.send_text(snapshot)

    async def look_up(self, short: tokens.ShortShare) -> tokens.Shared | None:
        """What a short share token names (a batched read); None once the socket has been
        closed for it (an unknown or expired link: 4401; no database: 1013)."""
        found = await self.read(self.application.lookups.share_link(short.token))
        if found is None:
            return None
        named = shares.names(found[0], utcnow())
        if named is None:
            return self._reject(CLOSE_UNAUTHENTICATED, shares.GONE)
        return tokens.Shared(*named)

    async def link(self, shared: tokens.Shared, parcel_id: int | None) -> tuple[User | None, dict[str, Any] | None]:
        """A share link's viewer and its parcel; (None, None) once the socket has been closed for it."""
        if shared.parcel_id != parcel_id:
            return link_viewer(shared.parcel_id), None
        found = await self.read(self.application.lookups.parcel(parcel_id))
        if found is None:
            return None, None
        parcel = found[0]
        if not shares.still_valid(parcel, shared.version, utcnow()):
            return self._reject(CLOSE_UNAUTHENTICATED, shares.GONE), None
        if parcel["status"] in parcels.FINISHED:
            return self._reject(CLOSE_UNAUTHENTICATED, shares.NOT_LIVE.format(status=parcel["status"])), None
        return link_viewer(parcel_id), parcel

    def receive(self, message: dict[str, Any]) -> None:
        state = self.hub.parcel_state(self.parcel_id)
        if message["type"] == "location_batch":
            fixes = protocol.parse_batch(message, self.parcel_id)
            authorise_location(self.user, state)
            return self.hub.store_batch(self.parcel_id, self.user.id, fixes)
        location = protocol.parse_location(message, self.parcel_id)
        authorise_location(self.user, state)
        self.hub.publish_location(self.parcel_id, self.user.id, location)

    def left(self) -> None:
        if self.parcel_id is None:
            return
        self.hub.unsubscribe(self, self.parcel_id)
        if self.user.role == "driver":
            self.hub.driver_left(self.parcel_id, self.user.id)


def authorise_location(user: User, state: ParcelState) -> None:
    """May this user send a location for a parcel in this state now? (ProtocolError: no.)"""
    if not can_send_location(user, state.driver_id):
        raise protocol.ProtocolError("only the parcel's assigned driver can send its location")
    if state.finished:
        raise protocol.ProtocolError(f"the parcel is {state.status}; its location is no longer tracked")


def may_send_location(user: User, state: ParcelState) -> bool:
    """`authorise_location` as a question (a route skips a parcel reassigned or finished a moment ago)."""
    return can_send_location(user, state.driver_id) and not state.finished


def _frame_size(message: str | bytes) -> int:
    """A frame's length in bytes (a text frame arrives decoded, a binary one as bytes)."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode("utf-8", "surrogatepass"))
