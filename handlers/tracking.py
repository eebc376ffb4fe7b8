"""The tracking WebSocket (docs/protocol.md, "The tracking socket").

Authenticate, authorise, validate, and hand to the hub.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from typing import Any

import pymongo
import tornado.websocket
from pymongo.errors import PyMongoError
from tornado.iostream import StreamClosedError

from auth import tokens
from handlers.base import apply_forwarded
from models import parcels, users
from models.access import User, can_send_location, can_view
from models.db import parse_id, unreachable
from realtime import protocol
from realtime.hub import Hub

log = logging.getLogger("parcel.tracking")

RATE_LIMIT = 10  # location messages
RATE_WINDOW = 1.0  # seconds

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429
CLOSE_TRY_LATER = 1013  # the database is unavailable: the page reconnects with backoff
CLOSE_TOO_SLOW = 1008  # policy violation: a subscriber that stopped reading
MAX_UNSENT = 1024 * 1024  # bytes waiting for one subscriber before it is closed
NOT_ALLOWED = "this parcel does not exist or you may not track it"


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

    _frame_start = False

    async def _receive_frame(self) -> None:
        self._frame_start = True  # the next two bytes read are a frame's header
        await super()._receive_frame()

    async def _read_bytes(self, n: int) -> bytes:
        data = await super()._read_bytes(n)
        if self._frame_start:
            self._frame_start = False
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


class TrackingSocket(tornado.websocket.WebSocketHandler):
    user: User | None = None
    parcel_id: int | None = None
    _counted: str | None = None  # the address this socket is counted under in `Limits`
    kind = "tracking"  # its label in /metrics

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

    async def open(self) -> None:
        self._recent: deque[float] = deque()
        config = self.application.config
        apply_forwarded(self.request, config.trusted_proxies)
        raw_id = self._argument("parcel_id")
        if not re.fullmatch(r"-?[0-9]+", raw_id):
            return self._reject(CLOSE_BAD_REQUEST, "parcel_id must be an integer")
        try:
            claimed = tokens.verify(self._argument("token"), tokens.SOCKET_TYPES, config.secret_key)
        except tokens.TokenError as e:
            return self._reject(CLOSE_UNAUTHENTICATED, str(e))
        parcel_id = parse_id(raw_id)  # any other integer names no parcel
        try:
            with pymongo.timeout(config.database_deadline):
                user = await users.get_user(self.application.db, claimed.id)
                parcel = None if parcel_id is None else await parcels.get_parcel(self.application.db, parcel_id)
        except PyMongoError as e:
            if not unreachable(e):
                raise
            self.application.hub.metrics.database_errors.inc()
            return self._reject(CLOSE_TRY_LATER, "the database is unavailable; try again in a moment")
        if not claimed.matches(user):  # deleted, demoted, logged out, or a new password since
            return self._reject(CLOSE_UNAUTHENTICATED, "the token is no longer valid; log in again")
        if parcel is None or not can_view(user, parcel):
            return self._reject(CLOSE_FORBIDDEN, NOT_ALLOWED)
        if self.ws_connection is None or self.ws_connection.is_closing():
            return  # the peer left while we looked the parcel up
        address = self.request.remote_ip or ""
        if refused := self.application.limits.open(user.id, address):
            return self._reject(CLOSE_TOO_MANY, refused)
        self._counted = address
        self.user, self.parcel_id = user, parcel_id
        snapshot = self.hub.subscribe(self, parcel)
        self.send_text(protocol.subscribed(parcel_id, user.role, parcel["status"]))
        if snapshot:
            self.send_text(snapshot)

    def on_message(self, message: str | bytes) -> None:
        if self.parcel_id is None or self.ws_connection is None or self.ws_connection.is_closing():
            return  # rejected or revoked: frames the peer sent before it saw our close are dropped
        self.hub.metrics.tracking_messages_in.inc()
        try:
            self._check_rate()
            location = protocol.parse_location(protocol.parse_message(message), self.parcel_id)
            self._authorise_location()
        except protocol.ProtocolError as e:
            return self.send_text(protocol.error(str(e)))
        self.hub.publish_location(self.parcel_id, self.user.id, location)

    def _authorise_location(self) -> None:
        state = self.hub.parcel_state(self.parcel_id)
        if not can_send_location(self.user, state.driver_id):
            raise protocol.ProtocolError("only the parcel's assigned driver can send its location")
        if state.finished:
            raise protocol.ProtocolError(f"the parcel is {state.status}; its location is no longer tracked")

    def _check_rate(self) -> None:
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - RATE_WINDOW:
            self._recent.popleft()
        if len(self._recent) >= RATE_LIMIT:
            raise protocol.ProtocolError(f"too many messages: at most {RATE_LIMIT} a second")
        self._recent.append(now)
        if refused := self.application.limits.message(self.user.id):
            raise protocol.ProtocolError(refused)

    def on_close(self) -> None:
        if self._counted is not None:
            self.application.limits.close(self.user.id, self._counted)
            self._counted = None
        if self.parcel_id is None:
            return
        self.hub.unsubscribe(self, self.parcel_id)
        if self.user.role == "driver":
            self.hub.driver_left(self.parcel_id, self.user.id)

    def _argument(self, name: str) -> str:
        """A query argument ("" when absent); bytes that are not UTF-8 become U+FFFD and so fail validation."""
        values = self.request.query_arguments.get(name)
        return values[-1].decode("utf-8", "replace").strip() if values else ""

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Tornado's version logs the request's URI, and a socket's URI carries its token.
        log.error("uncaught exception on %s %s", self.request.method, self.request.path, exc_info=(typ, value, tb))

    # -- the hub's side (Subscriber) -----------------------------------------

    def send_text(self, text: str) -> None:
        """Send a frame; a socket that has gone meanwhile is simply skipped, and one whose
        reader has fallen MAX_UNSENT behind is closed (1008) rather than kept in memory."""
        if _unsent(self.ws_connection) > MAX_UNSENT:
            if not self.ws_connection.is_closing():
                log.info("closing a socket that stopped reading (%d bytes waiting)", _unsent(self.ws_connection))
                self.close(CLOSE_TOO_SLOW, "you are not reading your messages")
                if self.parcel_id is not None:  # no more fan-out to it while its close is pending
                    self.hub.unsubscribe(self, self.parcel_id)
            return
        try:
            future = self.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            return
        future.add_done_callback(_ignore_closed)

    def revoke(self, message: str, code: int = CLOSE_FORBIDDEN) -> None:
        self._reject(code, message)

    def _reject(self, code: int, message: str) -> None:
        self.send_text(protocol.error(message))
        self.close(code, message[:120])


def _unsent(connection: Any) -> int:
    """Bytes written to a socket that its peer has not taken yet (Tornado keeps no public count)."""
    buffer = getattr(getattr(connection, "stream", None), "_write_buffer", None)  # None once closed
    return len(buffer) if buffer is not None else 0


def _ignore_closed(future: Any) -> None:
    # Retrieve the outcome so a peer that vanished mid-write is not logged as an error.
    if not future.cancelled():
        future.exception()
