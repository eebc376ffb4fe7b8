"""What every socket of the product shares (docs/security.md, "Limits"): the WebSocket
protocol's rules (`StrictProtocol`), origins, the close codes, and `Socket`, the base of
the parcel's, the route's and the board's sockets: authenticate, authorise, count in,
rate-limit, and be the hub's subscriber.

A handshake that refuses a socket closes it with its code and raises `Closed`, which
`Socket.open` catches: a subclass's `handshake` reads straight on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import pymongo
import tornado.websocket
from pymongo.errors import PyMongoError
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from auth import tokens
from handlers.base import apply_forwarded
from models import keys, lookups, shares
from models.access import VIEWER, User
from models.db import unreachable
from realtime import protocol
from realtime.frames import text_frame
from realtime.hub import Hub
from settings import WEBSOCKET_MAX_MESSAGE_SIZE as MAX_FRAME

log = logging.getLogger("parcel.tracking")

RATE_WINDOW = 1.0  # seconds; Settings.rate_limit location messages within it
FLOOD_FACTOR = 3  # rate_limit times this many frames within RATE_WINDOW, refused ones included, close it (4429)

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429
CLOSE_TRY_LATER = 1013  # the database is unavailable: the page reconnects with backoff
CLOSE_TOO_SLOW = 1008  # policy violation: a subscriber that stopped reading
ENDED_MEANWHILE = ("your session has ended; log in again", shares.GONE)  # a user's, a share link's


class Closed(Exception):
    """The socket has been closed during its handshake (with its code and message): stop there."""


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
    __slots__ = ("user", "_counted", "_recent", "_mark", "parcel_id", "parcels", "_holding")
    kind: str  # its label in /metrics and in the hub
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
        self._holding: list[tuple[int | None, bytes]] | None = None  # the hub's frames while it starts (`hold`)

    def prepare(self) -> None:
        apply_forwarded(self.request, self.application.config.trusted_proxies)

    async def open(self) -> None:
        try:
            await self.handshake()
        except Closed:
            pass

    async def handshake(self) -> None:
        """Admit the socket and start it (Closed: it has been refused, and closed)."""
        raise NotImplementedError

    def closing(self) -> bool:
        """Has the socket been closed, by us or by the peer (who may leave while we look things up)?"""
        return self.ws_connection is None or self.ws_connection.is_closing()

    async def read(self, read: Awaitable[Any]) -> Any:
        """A database read's result (Closed once the socket has been closed with 1013: the
        database did not answer within its deadline, or too many handshakes wait for it:
        models/lookups.py)."""
        try:
            with pymongo.timeout(self.application.config.database_deadline):
                return await read
        except lookups.Busy as e:
            self._refuse(CLOSE_TRY_LATER, str(e))
        except PyMongoError as e:
            if not unreachable(e):
                raise
            self.hub.metrics.database_errors.inc()
            self._refuse(CLOSE_TRY_LATER, "the database is unavailable; try again in a moment")

    def credentials(self) -> tokens.Claimed | tokens.Shared | tokens.ShortShare:
        """What the socket's token names (Closed for a bad one: 4401; for an API key: 4403)."""
        token = self._argument("token")
        if keys.looks_like_key(token):
            self._refuse(CLOSE_FORBIDDEN, "an API key cannot open a socket: sockets take a person's access token")
        try:
            return tokens.verify_socket(token, self.application.config.secret_key)
        except tokens.TokenError as e:
            self._refuse(CLOSE_UNAUTHENTICATED, str(e))

    async def authenticate(self, claimed: tokens.Claimed | tokens.Shared | tokens.ShortShare) -> User:
        """The user `claimed` names, still in the same session and of this socket's roles
        (Closed otherwise: 4401, 4403 or 1013)."""
        if isinstance(claimed, tokens.Shared | tokens.ShortShare):
            self._refuse(CLOSE_UNAUTHENTICATED, "a share link opens only its parcel's tracking socket")
        user = self.hub.known_user(claimed.id)
        if user is None:
            user = await self.read(self.application.lookups.user(claimed.id))
            if user is not None:
                self.hub.remember_user(user)
        if not claimed.matches(user):  # deleted, demoted, logged out, or a new password since
            self._refuse(CLOSE_UNAUTHENTICATED, "the token is no longer valid; log in again")
        if self.roles and user.role not in self.roles:
            self._refuse(CLOSE_FORBIDDEN, f"this socket is for {' and '.join(r + 's' for r in self.roles)}")
        return user

    async def admit(self, load: Callable[[User], Awaitable[Any]]) -> tuple[User, Any]:
        """Authenticate, read what the socket starts from (`load(user)`), and count it in
        (Closed otherwise: 4401, 4403, 1013 or 4429)."""
        user = await self.authenticate(self.credentials())
        found = await self.read(load(user))
        self.count_in(user)
        return user, found

    def count_in(self, user: User) -> None:
        """Count the socket under its user's and address's limits (Closed once refused, 4429,
        or once the peer has left)."""
        if self.closing():
            raise Closed  # the peer left while we looked things up
        if self.hub.ended_since(user.id, self._mark):  # while we looked things up
            self._refuse(CLOSE_UNAUTHENTICATED, ENDED_MEANWHILE[user.role == VIEWER])
        address = self.request.remote_ip or ""
        if refused := self.application.limits.open(user.id, address):
            self._refuse(CLOSE_TOO_MANY, refused)
        self._counted, self.user = address, user
        self._forget_request()

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
            rate_limit = self.application.config.rate_limit
            if len(self._recent) >= FLOOD_FACTOR * rate_limit:
                return self._reject(CLOSE_TOO_MANY, f"too many messages: at most {rate_limit} a second")
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
        rate_limit = self.application.config.rate_limit
        if len(self._recent) > rate_limit:
            raise protocol.ProtocolError(f"too many messages: at most {rate_limit} a second")
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

    def hold(self) -> None:
        """Until `release`, the hub's frames wait: the socket's first messages are still being read."""
        self._holding = []

    def release(self, after: int) -> None:
        """Send the frames held meanwhile, but those numbered up to `after` (its first messages had them)."""
        held, self._holding = self._holding, None
        for offset, frame in held or ():
            if offset is None or offset > after:
                self._write(frame)

    def send_text(self, text: str) -> None:
        self._write(text_frame(text))

    def send_frame(self, frame: bytes, offset: int | None = None) -> None:
        """A framed message from the hub (realtime/frames.py), numbered `offset` on its parcel's stream."""
        if self._holding is not None:
            self._holding.append((offset, frame))
        else:
            self._write(frame)

    def _write(self, frame: bytes) -> None:
        """Write a frame; a socket that has gone meanwhile is simply skipped, and one whose reader
        has fallen Settings.max_unsent behind is closed (1008) rather than kept in memory."""
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            return
        stream = connection.stream
        unsent = len(stream._write_buffer)  # Tornado keeps no public count of bytes not yet taken
        if unsent > self.application.config.max_unsent:
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

    def _refuse(self, code: int, message: str) -> NoReturn:
        """Close the socket during its handshake, and end the handshake (Closed)."""
        self._reject(code, message)
        raise Closed



def _frame_size(message: str | bytes) -> int:
    """A frame's length in bytes (a text frame arrives decoded, a binary one as bytes)."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode("utf-8", "surrogatepass"))
