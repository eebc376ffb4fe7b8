"""The hub: per-parcel subscribers held in the IOLoop, fan-out and sampling.

Handlers hand the hub what they have validated and authorised; the hub
serialises each event once (through `realtime.protocol`), sends the same text to
every subscriber of the parcel, keeps the latest location of each parcel for the
snapshot on connect, and passes every Nth accepted location (and a driver's last
one when their socket closes) to the sample writer, never making the broadcast
wait for it.

Subscribers come in three shapes, all fed from the same events:
- a parcel's socket (its driver, owner, a dispatcher, a share link's viewer);
- a driver's route socket, subscribed to each of the driver's active parcels, whose
  set the hub changes as parcels are assigned, reassigned and finished;
- a dispatcher's board, which gets every parcel's status and, conflated to one per
  parcel per `BOARD_INTERVAL`, every location.
Everything the hub holds of one parcel is in its `Channel` (realtime/channel.py):
subscribers, state, latest location, journey (ETA, geofences, fix quality), sampling
and the board's conflation. The hub is a registry of channels, users, route sockets
and boards, with the two directions: events in (`publish_*`, `parcel_changed`, ...,
onto the broker) and events out (`_deliver`, from the broker, in every process that
watches the parcel). A parcel's messages for its tracking sockets are numbered and held
by the broker, so a socket that reconnects is sent what it missed (`recover`,
docs/protocol.md, "Recovery on reconnect").
The application hands it the sample writer and the metrics it reports to.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol
from weakref import WeakKeyDictionary

from models import parcels, shares, users
from models.access import VIEWER, User, link_viewer, location_refusal
from models.db import Database, from_ms, iso, now_ms, stamp, unreachable, utcnow
from models.locations import SampleWriter, thin_batch
from realtime import protocol
from realtime.broker import Recovery, make_broker
from realtime.channel import Channel, ParcelState, Position, Subscriber, stored_location
from realtime.events import Events
from realtime.frames import text_frame
from realtime.journey import Journey
from realtime.metrics import Metrics

log = logging.getLogger("parcel.hub")

SESSION_ENDED = 4401  # the close code of a socket whose user's session ended
LINK_ENDED = 4401  # a share link's socket when its links are revoked or its parcel finishes
BOARD_INTERVAL = 1.0  # seconds: a board gets at most one location per parcel this often
RESYNC_RETRY = 5  # seconds between two re-checks after a broker outage while the database does not answer
HANDSHAKE_MEMORY = 300.0  # seconds a session's end is remembered for the handshakes in flight then
NO_PARCELS = "you have no active parcels to share your position with"
NOT_ON_ROUTE = "parcel_id is not one of your active parcels"
WHOLE_ROUTE: Any = object()  # a route's fix that names no parcel (`publish_route`)


class Route(Subscriber, Protocol):
    """A driver's route socket (handlers/fleet.py)."""

    parcels: list[int]  # the driver's active parcels, in route order: the hub keeps it


class Hub:
    """`state_ttl`: how long the hub trusts its copy of a parcel's driver and status
    before it re-reads it, so that a change made by another process (the CLI) lands."""

    WHOLE_ROUTE = WHOLE_ROUTE  # for the route socket: its fix names no parcel

    def __init__(self, db: Database, writer: SampleWriter, metrics: Metrics, events: Events, *, sample_every: int,
                 broker_url: str, state_ttl: float, shutdown_timeout: float, geofence_radius_m: float,
                 arriving_within: float = 600.0) -> None:
        self.db = db
        self.metrics = metrics
        self.writer = writer
        self.events = events
        self.sample_every = sample_every
        self.state_ttl = state_ttl
        self.shutdown_timeout = shutdown_timeout
        self.geofence_radius_m = geofence_radius_m
        self.arriving_within = arriving_within  # seconds: an ETA to the destination under this is "arriving"
        self.broker = make_broker(broker_url, self._deliver, metrics=metrics, resync=self._resync_soon)
        self._channels: dict[int, Channel] = {}
        self._link_versions: WeakKeyDictionary[Subscriber, int] = WeakKeyDictionary()  # share sockets' link versions
        self._resync_wanted = False
        self._resyncing: asyncio.Task | None = None
        self._refresh_due = False  # a batch of re-reads (`_refresh`) is scheduled
        self._routes_due: set[int] = set()  # drivers whose route is read and published next (`_route_soon`)
        self._routing: asyncio.Task | None = None
        self._by_user: dict[int, set[Subscriber]] = {}
        self._routes: dict[int, set[Route]] = {}  # a driver's route sockets, by driver id
        self._boards: set[Subscriber] = set()
        self._users: dict[int, tuple[User, float]] = {}  # users seen at handshakes, with when
        self._ends = 0  # sessions (and share links) ended so far: a handshake's mark (`session_mark`)
        self._ended: dict[int, tuple[int, float]] = {}  # user id → the end's number and when
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.broker.start()

    def close_all(self) -> None:
        """Close every socket as "going away" (1001), so pages reconnect to the next server
        (every socket, boards and routes too, is under its user)."""
        for subscribers in list(self._by_user.values()):
            for subscriber in list(subscribers):
                subscriber.close(1001, "the server is restarting")

    async def stop(self) -> None:
        """Stop the background re-reads (the database client closes next), then write every
        driver's unsaved last position and everything queued."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in list(self._channels.values()):
            if channel.unsaved is not None:
                self._save_unsaved(channel)
        await self.writer.drain(self.shutdown_timeout)
        await self.broker.close()

    # -- channels --------------------------------------------------------------

    def channel(self, parcel_id: int) -> Channel | None:
        """The parcel's channel, if the hub holds anything of it."""
        return self._channels.get(parcel_id)

    def _open(self, parcel_id: int) -> Channel:
        channel = self._channels.get(parcel_id)
        if channel is None:
            channel = self._channels[parcel_id] = Channel(parcel_id)
        return channel

    def _release(self, channel: Channel | None) -> None:
        """The one place a channel is dropped: once it is idle (realtime/channel.py)."""
        if channel is not None and channel.idle and self._channels.get(channel.parcel_id) is channel:
            del self._channels[channel.parcel_id]

    def _spawn(self, work: Awaitable[None], doing: str) -> asyncio.Task:
        """Run `work` in the background; a failure is logged here, as `doing` failing."""
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("%s failed", doing)

        # A context of its own: a request that started it must not lend it its database deadline.
        task = asyncio.get_running_loop().create_task(run(), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- users -------------------------------------------------------------------

    def known_user(self, user_id: int) -> User | None:
        """A user read for a handshake within `state_ttl` (their sessions ending forgets them at once)."""
        seen = self._users.get(user_id)
        return seen[0] if seen is not None and time.monotonic() - seen[1] <= self.state_ttl else None

    def remember_user(self, user: User) -> None:
        now = time.monotonic()
        if len(self._users) >= 10_000:
            self._users = {i: seen for i, seen in self._users.items() if now - seen[1] <= self.state_ttl}
        self._users[user.id] = (user, now)

    def session_mark(self) -> int:
        """Taken when a handshake starts: `ended_since` then tells whether the user's sessions
        (or a share link's links) ended while it awaited the database."""
        return self._ends

    def ended_since(self, user_id: int, mark: int) -> bool:
        """Did this user's sessions end (a share viewer: its links end) after `mark`? A socket
        closed by `_end_sessions` must not be admitted by a handshake that was in flight then."""
        ended = self._ended.get(user_id)
        return ended is not None and ended[0] > mark

    def _note_ended(self, user_id: int) -> None:
        now = time.monotonic()
        if len(self._ended) >= 10_000:  # a handshake in flight is far younger than HANDSHAKE_MEMORY
            self._ended = {i: e for i, e in self._ended.items() if now - e[1] <= HANDSHAKE_MEMORY}
        self._ends += 1
        self._ended[user_id] = (self._ends, now)

    # -- subscribers -------------------------------------------------------

    def known(self, parcel_id: int) -> ParcelState | None:
        """What the hub holds of a parcel, if it was read or kept up to date within `state_ttl`
        (a socket's handshake then needs no database read)."""
        channel = self._channels.get(parcel_id)
        state = channel.state if channel is not None else None
        return state if state is not None and time.monotonic() - state.checked <= self.state_ttl else None

    def subscribe(self, subscriber: Subscriber, parcel: dict[str, Any], loaded: bool = True) -> None:
        """Add a subscriber of a parcel just read from the database (`loaded`) or `known()`;
        `recover` then says what to send it first."""
        channel = self._open(parcel["_id"])
        self._join(channel, subscriber)
        self._by_user.setdefault(subscriber.user.id, set()).add(subscriber)
        if subscriber.user.role == VIEWER:  # its link's version is the parcel's it was checked against
            self._link_versions[subscriber] = shares.version(parcel)
        if loaded or channel.state is None:
            channel.state = ParcelState.of(parcel)

    async def recover(self, subscriber: Subscriber, parcel_id: int, since: int | None,
                      epoch: str) -> tuple[Recovery, list[str]]:
        """A new subscriber's start (docs/protocol.md, "Recovery on reconnect"): the parcel's stream
        as the broker holds it, and what to send after `subscribed`: every message after `since`
        when they are all held (`Recovery.missed`), else the snapshot (the latest location)."""
        recovery = await self.broker.recover(parcel_id, since, epoch)
        channel = self._channels.get(parcel_id)
        if channel is None or channel.state is None:  # it left while the broker answered
            return recovery, []
        viewer = subscriber.user.role == VIEWER
        if recovery.missed is not None:
            if not viewer:
                return recovery, recovery.missed
            return recovery, [shown for text in recovery.missed if (shown := self._for_viewer(channel, text))]
        state = channel.state
        if recovery.latest is not None and not state.finished:
            # The driver's newest fix, made in any process: newer than this process's copy when it
            # has had no subscriber for a while (it stopped listening), if still the parcel's driver.
            held = json.loads(recovery.latest)
            known = channel.latest or state.stored
            if held["driver_id"] == str(state.driver_id) and (known is None or held["timestamp"] > known["timestamp"]):
                channel.latest = held
        latest = channel.latest or channel.state.stored
        if latest is None or (viewer and not self._link_shows(channel, latest)):
            return recovery, []
        return recovery, [protocol.encode(protocol.without_offset(latest), viewer=viewer)]

    def _for_viewer(self, channel: Channel, text: str) -> str:
        """A held message as a share link's viewer may see it ("": not at all)."""
        message = json.loads(text)
        if message["type"] != "location_update":
            return text
        return protocol.encode(message, viewer=True) if self._link_shows(channel, message) else ""

    def _join(self, channel: Channel, subscriber: Subscriber) -> None:
        if not channel.subscribers:
            self.broker.watch(channel.parcel_id)
        channel.subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber, parcel_id: int | None = None) -> None:
        """Remove a subscriber from one parcel (`parcel_id`), or from everything (None: its socket closed)."""
        if parcel_id is None:
            if subscriber in self._boards:
                self._boards.discard(subscriber)
                if not self._boards:
                    self.broker.watch_boards(False)
            if subscriber.kind == "driver":
                self._leave_route(subscriber)
        else:
            self._remove(subscriber, parcel_id)
        if parcel_id is None or subscriber.kind == "tracking":
            mine = self._by_user.get(subscriber.user.id)
            if mine is not None:
                mine.discard(subscriber)
                if not mine:
                    del self._by_user[subscriber.user.id]

    def _remove(self, subscriber: Subscriber, parcel_id: int) -> None:
        channel = self._channels.get(parcel_id)
        if channel is None:
            return
        if subscriber not in channel.subscribers:
            return
        channel.subscribers.discard(subscriber)
        if not channel.subscribers:
            self.broker.unwatch(parcel_id)
            channel.state = None
            channel.stale = False
            self._release(channel)

    def join_route(self, socket: Route, active: list[dict[str, Any]]) -> None:
        """A driver's route socket: a subscriber of each of their active parcels, from now on
        of every parcel assigned to them, until it is finished or reassigned."""
        self._routes.setdefault(socket.user.id, set()).add(socket)
        self._by_user.setdefault(socket.user.id, set()).add(socket)
        socket.parcels = []
        for parcel in active:
            self._add_to_route(socket, parcel["_id"], ParcelState.of(parcel))

    def _add_to_route(self, socket: Route, parcel_id: int, state: ParcelState) -> None:
        if parcel_id in socket.parcels:
            return
        socket.parcels.append(parcel_id)
        channel = self._open(parcel_id)
        self._join(channel, socket)
        if channel.state is None:
            channel.state = state

    def _leave_route(self, socket: Route) -> None:
        mine = self._routes.get(socket.user.id)
        if mine is not None:
            mine.discard(socket)
            if not mine:
                del self._routes[socket.user.id]
        for parcel_id in socket.parcels:
            self._remove(socket, parcel_id)
            self.driver_left(parcel_id, socket.user.id)
        socket.parcels = []

    def join_board(self, board: Subscriber, active: list[dict[str, Any]]) -> str:
        """A dispatcher's board; returns its first message, every active parcel where it is."""
        if not self._boards:
            self.broker.watch_boards(True)
        self._boards.add(board)
        self._by_user.setdefault(board.user.id, set()).add(board)
        entries = []
        for parcel in active:
            latest = self.latest_location(parcel["_id"]) or stored_location(parcel)
            entries.append(protocol.board_entry(
                parcel["_id"], parcel["status"], parcel.get("driver_id"),
                latest["location"] if latest else None, latest["timestamp"] if latest else None,
                parcel["pickup"], parcel["destination"]))
        return protocol.board(entries)

    def subscriber_count(self, parcel_id: int) -> int:
        channel = self._channels.get(parcel_id)
        return len(channel.subscribers) if channel is not None else 0

    def open_sockets(self) -> dict[tuple[str, str], int]:
        """Open subscribers by (kind, role), for /metrics."""
        counts: dict[tuple[str, str], int] = {}
        for subscribers in self._by_user.values():
            for subscriber in subscribers:
                key = (subscriber.kind, subscriber.user.role)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def latest_location(self, parcel_id: int) -> dict[str, Any] | None:
        """The latest location_update broadcast for a parcel this process has seen, if any."""
        channel = self._channels.get(parcel_id)
        return channel.latest if channel is not None else None

    def parcel_state(self, parcel_id: int) -> ParcelState:
        """The driver and status of a parcel with subscribers.

        Read from memory (this is every message's check); copies older than `state_ttl`
        are refreshed from the database in the background, all of them in one batch."""
        channel = self._channels[parcel_id]
        state = channel.state
        assert state is not None, "a parcel with subscribers has a state"
        if time.monotonic() - state.checked > self.state_ttl:
            channel.state = replace(state, checked=time.monotonic())
            channel.stale = True
            if not self._refresh_due:
                self._refresh_due = True
                self._spawn(self._refresh(), "re-reading the parcels whose copy is stale")
        return state

    async def _refresh(self) -> None:
        """Re-read the stale parcels (a few `$in` queries), and apply what another process
        (the CLI, without Redis) changed."""
        await asyncio.sleep(0)  # let this moment's other stale parcels join the batch
        self._refresh_due = False
        stale = sorted(channel.parcel_id for channel in self._channels.values() if channel.stale)
        for parcel_id in stale:
            self._channels[parcel_id].stale = False
        try:
            found = await parcels.get_parcels(self.db, stale)
        except Exception as e:  # the database: tried again once the copies are stale again
            if not unreachable(e):
                raise
            log.warning("could not re-read %d parcels: %s", len(stale), str(e)[:120])
            return
        for parcel_id in stale:
            parcel, channel = found.get(parcel_id), self._channels.get(parcel_id)
            state = channel.state if channel is not None else None
            if parcel is None or state is None:
                continue
            if (parcel["status"], parcel.get("driver_id")) != (state.status, state.driver_id):
                self.parcel_changed(parcel, previous_driver_id=state.driver_id,
                                    status_changed=parcel["status"] != state.status)

    # -- events in -----------------------------------------------------------

    def publish_location(self, parcel_id: int, driver_id: int, location: dict[str, Any],
                         recorded_at: datetime | None = None) -> None:
        """An accepted location: broadcast it, and sample it for the history. A fix from an
        offline batch (`recorded_at`) is already stored, so it is only broadcast, and only
        when it is newer than the newest the parcel has, live or stored (after a restart the
        stored last location is all the hub knows)."""
        self._publish(self._channels[parcel_id], driver_id, location, recorded_at)

    def store_batch(self, parcel_id: int, driver_id: int, fixes: list[tuple[dict[str, Any], datetime]]) -> None:
        """An offline batch: its fixes go to the history at their own times, thinned
        (`thin_batch`: a replay stores nothing, a flood about one row a second of recorded
        time); the newest is broadcast if it is newer than anything the parcel has."""
        self._store_batch(self._channels[parcel_id], driver_id, fixes)

    def publish_route(self, socket: Route, location: dict[str, Any], named: Any = WHOLE_ROUTE) -> None:
        """A route socket's fix, to each of the driver's parcels they may send for now (or to
        the one its `parcel_id` names); ProtocolError when there is none."""
        for channel in self._route_targets(socket, named):
            self._publish(channel, socket.user.id, location)

    def store_route_batch(self, socket: Route, fixes: list[tuple[dict[str, Any], datetime]],
                          named: Any = WHOLE_ROUTE) -> None:
        """A route socket's offline batch, as `store_batch` for each parcel `publish_route` would reach."""
        for channel in self._route_targets(socket, named):
            self._store_batch(channel, socket.user.id, fixes)

    def _route_targets(self, socket: Route, named: Any) -> list[Channel]:
        route = [(parcel_id, self.parcel_state(parcel_id)) for parcel_id in socket.parcels]
        if named is not WHOLE_ROUTE:
            route = [(pid, state) for pid, state in route if pid == named and not isinstance(named, bool)]
            if not route:
                raise protocol.ProtocolError(NOT_ON_ROUTE)
        # a route skips a parcel reassigned or finished a moment ago
        allowed = [self._channels[pid] for pid, state in route if location_refusal(socket.user, state) is None]
        if not allowed:
            raise protocol.ProtocolError(NO_PARCELS)
        return allowed

    def _publish(self, channel: Channel, driver_id: int, location: dict[str, Any],
                 recorded_at: datetime | None = None) -> None:
        state = channel.state
        assert state is not None, "a parcel with subscribers has a state"
        if recorded_at is None:
            ms = now_ms()
            self._sample(channel, Position(driver_id, location, ms))
        else:
            ms = round(recorded_at.timestamp() * 1000)
        when = stamp(ms)
        if recorded_at is not None and any(known is not None and known["timestamp"] >= when
                                           for known in (channel.latest, state.stored)):
            return
        if channel.journey is None:
            channel.journey = Journey(state.pickup, state.destination, self.geofence_radius_m, self.arriving_within)
        seen = channel.journey.observe(location["lat"], location["lng"], ms / 1000, state.status,
                                       location.get("accuracy"))
        parcel_id = channel.parcel_id
        if seen.arriving:  # once per journey here; the outbox's key makes a second telling harmless
            self.events.arriving(parcel_id)
        message = protocol.location_message(parcel_id, driver_id, location, when, seen.eta, seen.low_quality)
        self.broker.record(parcel_id, {"kind": "location", "parcel_id": parcel_id, "accepted": time.time(),
                                       "message": message}, protocol.encode(message))
        if self.broker.wants_boards:
            self._to_boards(channel, message)
        for zone, event in seen.crossings:
            self.broker.record(parcel_id, {"kind": "geofence", "parcel_id": parcel_id, "zone": zone, "event": event,
                                           "timestamp": when}, protocol.geofence(parcel_id, zone, event, when))

    def _store_batch(self, channel: Channel, driver_id: int, fixes: list[tuple[dict[str, Any], datetime]]) -> None:
        kept = thin_batch(fixes, channel.batch_newest)
        for location, recorded_at in kept:
            self.writer.add(channel.parcel_id, driver_id, location, recorded_at)
        if kept:
            channel.batch_newest = kept[-1][1]
        location, recorded_at = fixes[-1]
        self._publish(channel, driver_id, location, recorded_at)

    def _sample(self, channel: Channel, position: Position) -> None:
        channel.accepted += 1
        if channel.accepted % self.sample_every == 0:
            channel.unsaved = None
            self.writer.add(channel.parcel_id, position.driver_id, position.location, from_ms(position.ms))
        else:
            channel.unsaved = position

    def driver_left(self, parcel_id: int, driver_id: int) -> None:
        """A driver's socket closed: their latest accepted update is written too."""
        channel = self._channels.get(parcel_id)
        if channel is not None and channel.unsaved and channel.unsaved.driver_id == driver_id:
            self._save_unsaved(channel)
            self._release(channel)

    def parcel_changed(self, parcel: dict[str, Any], previous_driver_id: int | None = None,
                       status_changed: bool = True) -> None:
        """A parcel's status (`status_changed`) or driver changed: tell its subscribers, cut off a
        replaced driver, move it between drivers' routes, and tell the outside (realtime/events.py)."""
        if status_changed:
            self.events.status_changed(parcel)
        now = utcnow()
        # A status is a parcel's message (numbered, held for recovery) and a control event, for every process.
        self.broker.record(parcel["_id"], {
            "kind": "parcel", "parcel_id": parcel["_id"], "status": parcel["status"],
            "driver_id": parcel.get("driver_id"), "owner_id": parcel["owner_id"],
            "pickup": parcel["pickup"], "destination": parcel["destination"],
            "revoke_driver_id": previous_driver_id if previous_driver_id != parcel.get("driver_id") else None,
            "shown_from": shares.position_since_text(parcel, now), "timestamp": iso(now),
        }, protocol.status(parcel["_id"], parcel["status"], now), control=True,
            ended=parcel["status"] in parcels.FINISHED)
        for driver_id in {parcel.get("driver_id"), previous_driver_id} - {None}:
            self._route_soon(driver_id)

    def route_reordered(self, driver_id: int) -> None:
        """A dispatcher put a driver's stops in a new order (models.parcels.set_route)."""
        self._route_soon(driver_id)

    def _route_soon(self, driver_id: int) -> None:
        """Read a driver's route and publish it (`_apply_route` in every process): once for any
        number of changes this moment, and again for changes while it is read."""
        self._routes_due.add(driver_id)
        if self._routing is None or self._routing.done():
            self._routing = self._spawn(self._publish_routes(), "publishing drivers' routes")

    async def _publish_routes(self) -> None:
        await asyncio.sleep(0)  # this moment's other changes join in
        while self._routes_due:
            driver_id = self._routes_due.pop()
            try:
                route = await parcels.active_for_driver(self.db, driver_id)
            except Exception as e:
                if not unreachable(e):
                    raise
                log.warning("could not read driver %d's route: %s", driver_id, str(e)[:120])
                continue
            now = utcnow()
            self.broker.publish({"kind": "route", "driver_id": driver_id,
                                 "stops": [[doc["_id"], shares.position_since_text(doc, now)] for doc in route]})

    def sessions_ended(self, user_id: int) -> None:
        """A user logged out, or their password or role changed: close their sockets (4401), in every process."""
        self.broker.publish({"kind": "user", "user_id": user_id})

    def links_revoked(self, parcel_id: int) -> None:
        """A parcel's share links were revoked: close their sockets (4401), in every process."""
        self.broker.publish({"kind": "links", "parcel_id": parcel_id})

    def _save_unsaved(self, channel: Channel) -> None:
        position, channel.unsaved = channel.unsaved, None
        if position is not None:
            self.writer.add(channel.parcel_id, position.driver_id, position.location, from_ms(position.ms))

    # -- events out (from the broker, in every process) -----------------------

    def _deliver(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "user":
            return self._end_sessions(event["user_id"])
        if kind == "route":
            return self._apply_route(event["driver_id"], event["stops"])
        if kind == "board":
            return self._tell_boards(text_frame(protocol.encode(event["message"])))
        parcel_id, offset = event["parcel_id"], event.get("offset")
        if kind == "location":
            message = event["message"] if offset is None else {**event["message"], "offset": offset}
            channel = self._open(parcel_id)
            channel.latest = message
            self._send_frame(channel, text_frame(protocol.encode(message)), message, offset)
            self.metrics.broadcast_latency.observe(max(0.0, time.time() - event["accepted"]))
        elif kind == "geofence":
            self._send(parcel_id, protocol.geofence(parcel_id, event["zone"], event["event"], event["timestamp"],
                                                    offset), offset)
        elif kind == "route_position":
            self._tell_route_position(parcel_id, event["stops_before"], offset)
        elif kind == "links":
            self._close_links(parcel_id, shares.GONE)
        else:
            self._apply_parcel_event(parcel_id, event)

    def _apply_parcel_event(self, parcel_id: int, event: dict[str, Any]) -> None:
        """A parcel's status or driver changed (`parcel_changed`, in whichever process)."""
        status, driver_id, now = event["status"], event["driver_id"], event["timestamp"]
        self._apply_change(parcel_id, driver_id, status, event.get("shown_from"))
        if event["revoke_driver_id"] is not None:
            self._revoke_driver(parcel_id, event["revoke_driver_id"])
        finished = status in parcels.FINISHED
        if driver_id is not None and not finished:
            state = ParcelState(driver_id, status, time.monotonic(), event["pickup"], event["destination"], parcel_id,
                                event["owner_id"])
            for socket in list(self._routes.get(driver_id, ())):
                if parcel_id not in socket.parcels:
                    self._add_to_route(socket, parcel_id, state)
                    socket.send_text(protocol.route_changed(socket.parcels))
        self._send(parcel_id, protocol.status(parcel_id, status, now, offset=event.get("offset")), event.get("offset"))
        channel = self._channels.get(parcel_id)
        for socket in [s for s in (channel.subscribers if channel else ()) if s.kind == "driver"]:
            if finished or socket.user.id != driver_id:
                self._drop_from_route(socket, parcel_id)
        if finished:
            self._close_links(parcel_id, shares.NOT_LIVE.format(status=status))
        if self._boards:
            self._tell_boards(text_frame(protocol.status(parcel_id, status, now, driver_id,
                                                         (event["pickup"], event["destination"]))))
        self._release(self._channels.get(parcel_id))

    def _apply_route(self, driver_id: int, stops: list[list[Any]]) -> None:
        """A driver's route as it stands (`_publish_routes`): each parcel's watchers get its new
        `route_position`, its share links what they may show now, the driver's route sockets
        their parcels in this order."""
        order = [parcel_id for parcel_id, _ in stops]
        for position, (parcel_id, shown_from) in enumerate(stops):
            channel = self._channels.get(parcel_id)
            if channel is None or not channel.subscribers:
                continue
            state = channel.state
            if state is not None and state.shown_from != shown_from:
                channel.state = replace(state, shown_from=shown_from)
            if channel.stops_before != position:
                # Not known before (learnt for a new subscriber, `stops_before`): told in `subscribed`
                # or the page, so only a change is sent: once, whichever processes saw it (`once`).
                told, channel.stops_before = channel.stops_before, position
                if told is not None:
                    self.broker.record(parcel_id, {"kind": "route_position", "parcel_id": parcel_id,
                                                   "stops_before": position},
                                       protocol.route_position(parcel_id, position), once=str(position))
        for socket in list(self._routes.get(driver_id, ())):
            ordered = [p for p in order if p in socket.parcels] + [p for p in socket.parcels if p not in order]
            if ordered != socket.parcels:
                socket.parcels[:] = ordered
                socket.send_text(protocol.route_changed(socket.parcels))

    def _tell_route_position(self, parcel_id: int, stops_before: int, offset: int | None) -> None:
        """To the parcel's own sockets: a route socket has its `parcels`."""
        channel = self._channels.get(parcel_id)
        if channel is None:
            return
        channel.stops_before = stops_before
        frame = text_frame(protocol.route_position(parcel_id, stops_before, offset))
        for subscriber in [s for s in channel.subscribers if s.kind == "tracking"]:
            subscriber.send_frame(frame, offset)

    def stops_before(self, parcel_id: int) -> int | None:
        """A subscribed parcel's place on its driver's route, for `subscribed`, when the hub knows
        it; else None, and the route is read now, so that its next change is sent."""
        channel = self._channels.get(parcel_id)
        state = channel.state if channel is not None else None
        if state is None or state.finished or state.driver_id is None:
            return None
        if channel.stops_before is None:
            self._route_soon(state.driver_id)
        return channel.stops_before

    def _send(self, parcel_id: int, text: str, offset: int | None = None) -> None:
        channel = self._channels.get(parcel_id)
        if channel is not None:
            self._send_frame(channel, text_frame(text), offset=offset)

    def _send_frame(self, channel: Channel, frame: bytes, message: dict[str, Any] | None = None,
                    offset: int | None = None) -> None:
        """One frame to every subscriber of the parcel; a viewer gets `message` without user ids."""
        viewer_frame = None
        sent = 0
        for subscriber in list(channel.subscribers):
            if message is not None and subscriber.user.role == VIEWER:
                if viewer_frame is None:
                    shown = self._link_shows(channel, message)
                    viewer_frame = text_frame(protocol.encode(message, viewer=True)) if shown else b""
                if viewer_frame:
                    subscriber.send_frame(viewer_frame, offset)
                    sent += 1
            else:
                subscriber.send_frame(frame, offset)
                sent += 1
        self.metrics.broadcasts_out.inc(sent)

    def _link_shows(self, channel: Channel, message: dict[str, Any] | None) -> bool:
        """May a share link's viewer see this location_update? Only one of the time from which
        the parcel's link shows the truck (models.shares.position_since: while in_transit)."""
        state = channel.state
        return message is not None and state is not None and shares.may_show(state.shown_from, message["timestamp"])

    def _to_boards(self, channel: Channel, message: dict[str, Any]) -> None:
        """A location for the boards (of every process), conflated where it is published: at most
        one per parcel per BOARD_INTERVAL, the latest one waiting sent when the interval ends."""
        now = time.monotonic()
        due = (channel.board_sent if channel.board_sent is not None else -BOARD_INTERVAL) + BOARD_INTERVAL
        if now >= due and channel.board_waiting is None:
            channel.board_sent = now
            self.broker.to_boards({"kind": "board", "message": message})
            return
        if channel.board_waiting is None:
            asyncio.get_running_loop().call_later(max(0.0, due - now), self._board_flush, channel)
        channel.board_waiting = message

    def _board_flush(self, channel: Channel) -> None:
        try:
            message, channel.board_waiting = channel.board_waiting, None
            if message is not None:
                channel.board_sent = time.monotonic()
                self.broker.to_boards({"kind": "board", "message": message})
            self._release(channel)
        except Exception:
            log.exception("could not send parcel %d's held location to the boards", channel.parcel_id)

    def _tell_boards(self, frame: bytes) -> None:
        for board in list(self._boards):
            board.send_frame(frame)
        self.metrics.broadcasts_out.inc(len(self._boards))

    def _drop_from_route(self, socket: Route, parcel_id: int) -> None:
        """A parcel leaves a driver's route (finished, or reassigned): their position there is saved."""
        if parcel_id in socket.parcels:
            socket.parcels.remove(parcel_id)
            self._remove(socket, parcel_id)
            self.driver_left(parcel_id, socket.user.id)
            socket.send_text(protocol.route_changed(socket.parcels))

    def _close_links(self, parcel_id: int, reason: str) -> None:
        self._note_ended(link_viewer(parcel_id).id)
        channel = self._channels.get(parcel_id)
        for subscriber in [s for s in (channel.subscribers if channel else ()) if s.user.role == VIEWER]:
            self.unsubscribe(subscriber, parcel_id)
            subscriber.revoke(reason, LINK_ENDED)

    def _apply_change(self, parcel_id: int, driver_id: int | None, status: str, shown_from: str | None) -> None:
        """Remember a parcel's new driver, status and what its share links show; once it is
        finished, save its final position and forget its journey."""
        channel = self._channels.get(parcel_id)
        if channel is None:
            return
        finished = status in parcels.FINISHED
        state = channel.state
        if state is not None:
            stored = state.stored
            if finished and channel.latest is not None:
                stored = channel.latest
            channel.state = replace(state, driver_id=driver_id, status=status, stored=stored, shown_from=shown_from)
        if finished:
            self._save_unsaved(channel)
            channel.finish()

    def _end_sessions(self, user_id: int) -> None:
        self._users.pop(user_id, None)
        self._note_ended(user_id)
        for subscriber in list(self._by_user.get(user_id, ())):
            for channel in [c for c in self._channels.values() if subscriber in c.subscribers]:
                self._remove(subscriber, channel.parcel_id)
            self.unsubscribe(subscriber)
            subscriber.revoke("your session has ended; log in again", SESSION_ENDED)

    def _revoke_driver(self, parcel_id: int, driver_id: int) -> None:
        """A replaced driver's parcel sockets are closed (4403); their position is not the
        parcel's now. (Their route socket only drops the parcel.)"""
        channel = self._channels.get(parcel_id)
        if channel is None:
            return
        channel.forget_position()
        for subscriber in list(channel.subscribers):
            if subscriber.kind == "tracking" and subscriber.user.role == "driver" and subscriber.user.id == driver_id:
                self.unsubscribe(subscriber, parcel_id)
                subscriber.revoke("you are no longer assigned to this parcel")

    # -- after a broker outage (realtime/broker.py) ----------------------------

    def _resync_soon(self) -> None:
        """The broker's subscription is back after a loss, or another process resent an event it
        could not publish then: re-check against the database, once for any number of calls
        meanwhile, and once more for calls that come while it runs."""
        self._resync_wanted = True
        if self._resyncing is None or self._resyncing.done():
            self._resyncing = self._spawn(self._resync_while_wanted(), "re-checking after the broker's outage")

    async def _resync_while_wanted(self) -> None:
        while self._resync_wanted:
            self._resync_wanted = False
            await asyncio.sleep(0.1)  # this moment's other resent events join in
            try:
                await self._resync()
            except Exception:
                log.exception("could not re-check sockets against the database after the broker's outage")

    async def _resync(self) -> None:
        """Whatever the other processes published while the broker was away never came: what this
        process holds is checked against the database (again every RESYNC_RETRY seconds while the
        database does not answer)."""
        self._users.clear()  # a user cached before the outage may have changed since
        while True:
            try:
                changed, links = await self._resync_parcels()
                ended = await self._resync_users()
                routes, boards = await self._resync_routes_and_boards()
                break
            except Exception as e:
                if not unreachable(e):
                    raise
                log.warning("could not re-check sockets against the database: %s; trying again in %d s",
                            str(e)[:120], RESYNC_RETRY)
                await asyncio.sleep(RESYNC_RETRY)
        log.info("re-checked after the broker's outage (parcels changed: %d, share sockets closed: %d, users whose "
                 "sessions ended: %d, routes refreshed: %d, boards refreshed: %d)",
                 changed, links, ended, routes, boards)

    async def _resync_parcels(self) -> tuple[int, int]:
        """Every parcel with subscribers: a new driver or status is applied as `_refresh` does;
        share sockets of links revoked meanwhile are closed (4401). Returns how many of each."""
        watched = [channel.parcel_id for channel in self._channels.values() if channel.subscribers]
        found = await parcels.get_parcels(self.db, watched)
        changed = closed = 0
        for parcel_id, parcel in found.items():
            channel = self._channels.get(parcel_id)
            state = channel.state if channel is not None else None
            if channel is None or state is None:  # its last subscriber left meanwhile
                continue
            if (parcel["status"], parcel.get("driver_id")) != (state.status, state.driver_id):
                self.parcel_changed(parcel, previous_driver_id=state.driver_id,
                                    status_changed=parcel["status"] != state.status)
                changed += 1
            version = shares.version(parcel)
            for viewer in [s for s in channel.subscribers if s.user.role == VIEWER]:
                if self._link_versions.get(viewer, version) < version:
                    self.unsubscribe(viewer, parcel_id)
                    viewer.revoke(shares.GONE, LINK_ENDED)
                    closed += 1
            if parcel.get("driver_id") is not None:  # its route may have changed meanwhile too
                self._route_soon(parcel["driver_id"])
        return changed, closed

    async def _resync_users(self) -> int:
        """Every user with open sockets: those whose session moved on (logout, new password, new
        role) or who were deleted have their sockets closed (4401). Returns how many users."""
        user_ids = [user_id for user_id in self._by_user if user_id > 0]  # share viewers' ids are negative
        found = await users.get_users(self.db, user_ids)  # `$in` batches of IN_CHUNK ids
        ended = 0
        for user_id in user_ids:
            stored = found.get(user_id)
            # Sessions only move on: a socket newer than this read is not taken for an old one.
            if any(stored is None or s.user.session < stored.session or
                   (s.user.session == stored.session and s.user.role != stored.role)
                   for s in self._by_user.get(user_id, ())):
                self._end_sessions(user_id)
                ended += 1
        return ended

    async def _resync_routes_and_boards(self) -> tuple[int, int]:
        """Parcels assigned meanwhile to a driver with a route socket here (the others came up in
        `_resync_parcels`), and a fresh snapshot for each board. Returns how many of each."""
        routes = 0
        for driver_id in list(self._routes):
            active = await parcels.active_for_driver(self.db, driver_id)
            for socket in list(self._routes.get(driver_id, ())):
                before = list(socket.parcels)
                for parcel in active:
                    channel = self._channels.get(parcel["_id"])
                    state = channel.state if channel is not None else None
                    if state is None or state.driver_id == driver_id:  # not reassigned since the read
                        self._add_to_route(socket, parcel["_id"], ParcelState.of(parcel))
                if socket.parcels != before:
                    socket.send_text(protocol.route_changed(socket.parcels))
                    routes += 1
        if not self._boards:
            return routes, 0
        active = await parcels.all_active(self.db)
        boards = list(self._boards)  # those still open after the read
        for board in boards:
            board.send_text(self.join_board(board, active))
        return routes, len(boards)
