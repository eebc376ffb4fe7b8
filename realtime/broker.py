"""Fan-out between processes: in-process by default, Redis with BROKER_URL.

A broker carries hub events to the hubs that need them, in three kinds:
- control events (a user's sessions ended, a parcel's links revoked, a parcel changed, a
  route changed) go to every process (`publish`);
- a parcel's messages for its tracking sockets (a location, a geofence, a status, a route
  position) are numbered (`record`): each gets the parcel's next `offset`, is held for
  recovery on reconnect (at least STREAM_KEEP messages and STREAM_SECONDS of them), and
  goes only to the processes that `watch` the parcel (they have subscribers for it); a
  status is also a control event, so it goes to every process;
- the boards' locations, conflated by the publishing hub, go to processes with boards.
A socket that reconnects asks `recover` for what it missed (docs/protocol.md, "Recovery
on reconnect").

`LocalBroker` (one process) numbers and holds in memory and delivers on the next turn of
the event loop. `RedisBroker` numbers and holds in Redis, atomically (one Lua script per
message: the parcel's offset, a capped stream of its messages, and the publish), so offsets
agree in every process and any process can answer a recovery; a parcel's messages travel on
its own sharded channel (`SSUBSCRIBE`, Redis 7: one server or a Cluster), to which only
processes with its subscribers listen. Every event, this process's own included, comes back
through the subscription, so each process sees one order.

While Redis cannot be reached, each process goes on serving its own sockets: events are
delivered here only (messages without an offset), what could not be published is counted
(`parcel_broker_unpublished_total{kind}`), and control events are kept and sent again,
marked `resent`, when Redis is back. What the other processes published meanwhile is lost,
so once the subscription is back the hub re-checks what it holds against the database
(`resync`), and each parcel that had messages meanwhile starts a new epoch: its watchers
that reconnect are told their messages cannot be recovered, and reload the history.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from realtime.protocol import with_offset

if TYPE_CHECKING:
    from realtime.metrics import Metrics

log = logging.getLogger("parcel.broker")

Deliver = Callable[[dict[str, Any]], None]
Resync = Callable[[], None]  # "check what you hold against the database" (it schedules the work)
CHANNEL = "parcel-tracking:events"  # control events, to every process
BOARDS = "parcel-tracking:boards"  # the boards' conflated locations, to processes with boards
KINDS = ("location", "geofence", "parcel", "user", "links", "route", "route_position", "board")
CONTROL = frozenset(("parcel", "user", "links", "route"))  # kept while Redis is away, sent when it is back
MAX_PIPELINE = 500  # events in one round trip to Redis
MAX_HELD = 10_000  # control events kept while Redis is away; older ones are dropped (the resync covers them)
RETRY_EVERY = 1.0  # seconds between two attempts to subscribe again
POLL = 1.0  # seconds the listener waits for a message before looking at its state again
STREAM_KEEP = 200  # a parcel's messages held for recovery: at least the last 200 ...
STREAM_SECONDS = 600  # ... and the last 10 minutes of them
STREAM_MAX = 10_000  # and at most this many (ten a second for over 15 minutes)
STREAM_TTL = 86_400  # seconds: a parcel without a message for a day is forgotten (a new epoch) ...
ENDED_TTL = STREAM_SECONDS  # ... and a finished one 10 minutes after its last message
WATCH_WAIT = 2.0  # seconds a recovery waits for this process's subscription to the parcel


class BrokerUnavailable(RuntimeError):
    """BROKER_URL is set but the broker cannot be reached."""


@dataclass(frozen=True)
class Recovery:
    """A parcel's stream as a reconnecting socket finds it: its `epoch`, its latest `offset`,
    the messages after the client's `since` (`missed`; None when not asked, or not held), and
    its newest location_update held (`latest`, for a process that has none of its own)."""

    epoch: str
    offset: int
    missed: list[str] | None
    latest: str | None = None


def new_epoch() -> str:
    return uuid.uuid4().hex[:16]


def deliver_safely(deliver: Deliver, event: dict[str, Any]) -> None:
    """Deliver one event; a failure is that event's (logged with its kind), never the broker's."""
    try:
        deliver(event)
    except Exception:
        log.exception("could not deliver a %s event", event.get("kind", "malformed"))


class Broker(ABC):
    """What the hub publishes to and is delivered from. Every event reaches `deliver` on a later
    turn of the loop than the one it was published or received in, in that order, one event's
    failure logged as its own (`deliver_safely`)."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._due: deque[dict[str, Any]] = deque()  # events waiting for this process's hub
        self._drain_handle: asyncio.Handle | None = None

    @abstractmethod
    async def start(self) -> None:
        """Connect (if there is anything to connect to); `BrokerUnavailable` when that fails."""

    @abstractmethod
    def publish(self, event: dict[str, Any]) -> None:
        """Hand a control event to every process's hub, this one's included; never waits."""

    @abstractmethod
    def record(self, parcel_id: int, event: dict[str, Any], message: str, *, control: bool = False,
               once: str | None = None, ended: bool = False) -> None:
        """Number a parcel's `message` (a built message, as its tracking sockets get it) with the
        parcel's next offset, hold it for recovery, and hand `event` with that `"offset"` to the
        hubs watching the parcel (every hub: `control`). `once`: nothing is recorded when the
        parcel's last message recorded with a `once` had the same one (a route position that
        several processes saw change is told once). `ended`: the parcel finished, so its stream
        is kept ENDED_TTL after this message, not STREAM_TTL."""

    @abstractmethod
    def to_boards(self, event: dict[str, Any]) -> None:
        """Hand an event to the hubs that have boards."""

    def watch(self, parcel_id: int) -> None:  # noqa: B027 (one process: it has every event)
        """This process has subscribers of the parcel: from now on its recorded events come here."""

    def unwatch(self, parcel_id: int) -> None:  # noqa: B027
        """This process has no subscriber of the parcel left."""

    def watch_boards(self, wanted: bool) -> None:  # noqa: B027
        """This process has boards (or, `wanted` False, none left)."""

    @property
    def wants_boards(self) -> bool:
        """May any process have boards? (Else their locations need not be conflated and sent.)"""
        return True

    @abstractmethod
    async def recover(self, parcel_id: int, since: int | None, epoch: str) -> Recovery:
        """The parcel's stream for a socket that saw up to `since` in `epoch` (None: a first connect).
        Called once the parcel is watched, so that nothing recorded afterwards is missed."""

    @abstractmethod
    async def ping(self) -> bool | None:
        """True when the broker answers, None when there is nothing to reach; raises when it cannot be reached."""

    async def close(self) -> None:
        """Deliver what is still due here; subclasses disconnect too."""
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
        while self._due:
            deliver_safely(self._deliver, self._due.popleft())

    def _deliver_soon(self, event: dict[str, Any]) -> None:
        self._due.append(event)
        if self._drain_handle is None:  # one callback a turn, however many events
            self._drain_handle = asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_handle = None
        # Only what was due when the turn began: what delivering publishes waits for the next turn.
        for _ in range(len(self._due)):
            deliver_safely(self._deliver, self._due.popleft())


class Stream:
    """One parcel's numbered messages, held in this process (LocalBroker)."""

    __slots__ = ("epoch", "offset", "held", "once", "latest", "expires")

    def __init__(self) -> None:
        self.epoch = new_epoch()
        self.offset = 0
        self.held: deque[tuple[int, float, str]] = deque()  # (offset, when, message)
        self.once: str | None = None
        self.latest: str | None = None
        self.expires = time.monotonic() + STREAM_TTL

    def add(self, message: str, location: bool, ended: bool) -> int:
        self.offset += 1
        now = time.monotonic()
        self.expires = now + (ENDED_TTL if ended else STREAM_TTL)
        numbered = with_offset(message, self.offset)
        self.held.append((self.offset, now, numbered))
        if location:
            self.latest = numbered
        held = self.held
        while len(held) > STREAM_MAX or (len(held) > STREAM_KEEP and held[0][1] < now - STREAM_SECONDS):
            held.popleft()
        return self.offset

    def recover(self, since: int | None, epoch: str) -> Recovery:
        missed = None
        if since is not None and epoch == self.epoch and since <= self.offset:
            if since == self.offset:
                missed = []
            elif self.held and self.held[0][0] <= since + 1:
                missed = [message for offset, _, message in self.held if offset > since]
        return Recovery(self.epoch, self.offset, missed, self.latest)


class LocalBroker(Broker):
    """One process: publishing is delivering, on the next loop turn; streams are held in memory."""

    def __init__(self, deliver: Deliver) -> None:
        super().__init__(deliver)
        self._streams: dict[int, Stream] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._boards = False

    def watch_boards(self, wanted: bool) -> None:
        self._boards = wanted

    @property
    def wants_boards(self) -> bool:
        return self._boards

    async def start(self) -> None:
        self._sweep()

    def publish(self, event: dict[str, Any]) -> None:
        self._deliver_soon(event)

    def record(self, parcel_id: int, event: dict[str, Any], message: str, *, control: bool = False,
               once: str | None = None, ended: bool = False) -> None:
        stream = self._stream(parcel_id)
        if once is not None:
            if stream.once == once:
                return
            stream.once = once
        self._deliver_soon({**event, "offset": stream.add(message, event["kind"] == "location", ended)})

    def to_boards(self, event: dict[str, Any]) -> None:
        self._deliver_soon(event)

    async def recover(self, parcel_id: int, since: int | None, epoch: str) -> Recovery:
        return self._stream(parcel_id).recover(since, epoch)

    async def ping(self) -> None:
        """Nothing to reach: /healthz reports the broker as "off"."""
        return None

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await super().close()

    def _stream(self, parcel_id: int) -> Stream:
        stream = self._streams.get(parcel_id)
        if stream is None:
            stream = self._streams[parcel_id] = Stream()
        return stream

    def _sweep(self) -> None:
        """Forget the streams that expired (their next reader gets a new epoch)."""
        now = time.monotonic()
        for parcel_id in [p for p, stream in self._streams.items() if stream.expires < now]:
            del self._streams[parcel_id]
        self._sweeper = asyncio.get_running_loop().call_later(60, self._sweep)


# One message recorded, atomically: its offset, the parcel's stream (entry ids are the
# offsets, trimmed to STREAM_KEEP messages or STREAM_SECONDS, whichever holds more, at
# most STREAM_MAX), its newest location, how long it is kept, and the publish. KEYS: the parcel's meta hash and
# stream. ARGV: a new epoch (used if it has none), the message, the event, the channel,
# "1" for a sharded channel, `once` ("" for none), "1" for a location, now (ms), keep,
# keep ms, max, ttl. `with_offset` (realtime/protocol.py) is the same concatenation.
RECORD = """
if not redis.call('HGET', KEYS[1], 'epoch') then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0)
end
if ARGV[6] ~= '' then
  if redis.call('HGET', KEYS[1], 'once') == ARGV[6] then return 0 end
  redis.call('HSET', KEYS[1], 'once', ARGV[6])
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local suffix = ',"offset":' .. offset .. '}'
local message = string.sub(ARGV[2], 1, -2) .. suffix
redis.call('XADD', KEYS[2], offset .. '-1', 't', ARGV[8], 'm', message)
local oldest = tonumber(ARGV[8]) - tonumber(ARGV[10])
for _ = 1, 4 do
  local length = redis.call('XLEN', KEYS[2])
  if length <= tonumber(ARGV[9]) then break end
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if tonumber(first[2][2]) >= oldest and length <= tonumber(ARGV[11]) then break end
  redis.call('XDEL', KEYS[2], first[1])
end
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'latest', message) end
redis.call('EXPIRE', KEYS[1], ARGV[12])
redis.call('EXPIRE', KEYS[2], ARGV[12])
local event = string.sub(ARGV[3], 1, -2) .. suffix
if ARGV[5] == '1' then redis.call('SPUBLISH', ARGV[4], event) else redis.call('PUBLISH', ARGV[4], event) end
return offset
"""

# A reconnecting socket's view of a parcel's stream: {epoch, offset, latest, recovered, missed}.
# KEYS: meta, stream. ARGV: a new epoch (used if it has none), since ("" for none), the
# client's epoch, ttl.
READ = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
local latest = redis.call('HGET', KEYS[1], 'latest') or ''
if ARGV[2] == '' or ARGV[3] ~= epoch then return {epoch, offset, latest, 0} end
local since = tonumber(ARGV[2])
if since > offset then return {epoch, offset, latest, 0} end
if since == offset then return {epoch, offset, latest, 1} end
local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-1', '+')
if #entries == 0 or entries[1][1] ~= (since + 1) .. '-1' then return {epoch, offset, latest, 0} end
local missed = {}
for i, entry in ipairs(entries) do missed[i] = entry[2][4] end
return {epoch, offset, latest, 1, missed}
"""

# After an outage: the parcels that had messages meanwhile start a new epoch (their offsets
# run on, so sockets still open see no step back). KEYS: meta, stream. ARGV: the new epoch.
NEW_EPOCH = """
if redis.call('HGET', KEYS[1], 'epoch') then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
  redis.call('HDEL', KEYS[1], 'latest')
  redis.call('DEL', KEYS[2])
end
return 1
"""


def parcel_keys(parcel_id: int) -> list[str]:
    """A parcel's meta hash and stream, in one hash slot (a Cluster runs a script on one node)."""
    return [f"pt:{{{parcel_id}}}:meta", f"pt:{{{parcel_id}}}:stream"]


def parcel_channel(parcel_id: int) -> str:
    """A parcel's sharded channel, in the same slot as its keys."""
    return f"pt:{{{parcel_id}}}"


class RedisBroker(Broker):
    """Several processes: events go through Redis and come back to every process that listens
    (the module's docstring); while Redis is away, they are delivered here only."""

    def __init__(self, url: str, deliver: Deliver, *, metrics: Metrics | None = None,
                 resync: Resync | None = None) -> None:
        import redis.asyncio as redis  # only needed when BROKER_URL is set
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        super().__init__(deliver)
        timeouts = {"socket_connect_timeout": 2, "socket_timeout": 5}
        # Publishing may reconnect once, at once (a pooled connection the server closed).
        self._redis = redis.from_url(url, retry=Retry(NoBackoff(), 1), **timeouts)
        # The subscription never reconnects behind our back: every gap in it is seen, and resynced.
        self._subscriber = redis.from_url(url, retry=Retry(NoBackoff(), 0), **timeouts)
        self._record = self._redis.register_script(RECORD)
        self._read = self._redis.register_script(READ)
        self._new_epoch = self._redis.register_script(NEW_EPOCH)
        self.origin = uuid.uuid4().hex  # this process's resent events, when Redis hands them back
        self._metrics = metrics
        self._resync = resync
        self._outbox: deque[tuple[Any, ...]] = deque()  # what waits to be sent, in order
        self._wake = asyncio.Event()
        self._held: deque[dict[str, Any]] = deque()  # control events kept while Redis is away
        self._unpublished: Counter[str] = Counter()  # by kind, since Redis was lost
        self._gaps: set[int] = set()  # parcels with messages delivered here only, since Redis was lost
        self._connected = False
        self._renew = False  # the publisher lost Redis: the subscription is renewed and resynced
        self._lost_at = 0.0
        self._pubsub: Any = None
        self._watched: dict[str, asyncio.Future[None]] = {}  # sharded channels: confirmed when done
        self._changes: dict[str, bool] = {}  # channel → subscribe (True) or not, not yet sent
        self._boards = False
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        if metrics is not None:
            for kind in KINDS:  # every series exists from the start, at 0
                metrics.broker_unpublished.labels(kind)

    async def start(self) -> None:
        try:
            await self._load_scripts()
            self._pubsub = await self._subscribe()
        except Exception as e:  # redis raises its own ConnectionError, TimeoutError, ...
            raise BrokerUnavailable(f"cannot reach the broker at BROKER_URL: {e}") from None
        self._connected = True
        self._tasks = [asyncio.ensure_future(task()) for task in (self._listen, self._send, self._subscriptions)]

    def publish(self, event: dict[str, Any]) -> None:
        if self._connected:
            self._queue(("publish", CHANNEL, event))
        else:
            self._here_only(event)

    def record(self, parcel_id: int, event: dict[str, Any], message: str, *, control: bool = False,
               once: str | None = None, ended: bool = False) -> None:
        if self._connected:
            self._queue(("record", parcel_id, event, message, control, once, ended))
        else:
            self._gaps.add(parcel_id)
            self._here_only(event)

    def to_boards(self, event: dict[str, Any]) -> None:
        if self._connected:
            self._queue(("publish", BOARDS, event))
        else:
            self._here_only(event)

    def watch(self, parcel_id: int) -> None:
        channel = parcel_channel(parcel_id)
        if channel not in self._watched:
            self._watched[channel] = asyncio.get_running_loop().create_future()
            self._change(channel, True)

    def unwatch(self, parcel_id: int) -> None:
        channel = parcel_channel(parcel_id)
        if self._watched.pop(channel, None) is not None:
            self._change(channel, False)

    def watch_boards(self, wanted: bool) -> None:
        if wanted != self._boards:
            self._boards = wanted
            self._change(BOARDS, wanted)

    async def recover(self, parcel_id: int, since: int | None, epoch: str) -> Recovery:
        """Read once the parcel's subscription is confirmed; while Redis is away, nothing is
        recoverable (an epoch of this process's own, which no stream has)."""
        confirmed = self._watched.get(parcel_channel(parcel_id))
        try:
            if confirmed is not None:
                await asyncio.wait_for(asyncio.shield(confirmed), WATCH_WAIT)
            found = await self._read(keys=parcel_keys(parcel_id), args=[
                new_epoch(), "" if since is None else since, epoch, STREAM_TTL])
        except asyncio.CancelledError:
            raise
        except Exception as e:  # Redis is away, or slower than WATCH_WAIT
            log.debug("could not read parcel %d's stream: %s", parcel_id, e)
            return Recovery(f"local-{self.origin[:12]}", 0, None)
        stream_epoch, offset, latest, recovered = found[:4]
        missed = [m.decode() for m in found[4]] if recovered and len(found) > 4 else [] if recovered else None
        return Recovery(stream_epoch.decode(), int(offset), missed, latest.decode() or None)

    async def ping(self) -> bool:
        return await self._redis.ping()

    # -- sending -----------------------------------------------------------------

    async def _load_scripts(self) -> None:
        """Load the recording script, which the sender's pipelines call by its hash: a pipeline
        given redis-py's Script object asks `SCRIPT EXISTS` first, a round trip per batch. A Redis
        that restarted lost it, and was lost meanwhile: `_back` loads it again."""
        await self._redis.script_load(RECORD)

    def _queue(self, item: tuple[Any, ...]) -> None:
        self._outbox.append(item)
        self._wake.set()

    async def _send(self) -> None:
        """Send what is queued, everything waiting at once in one pipeline: one round trip for
        many events, in order."""
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), MAX_PIPELINE))]
            pipeline = self._redis.pipeline(transaction=False)
            for item in batch:
                if item[0] == "publish":
                    pipeline.publish(item[1], json.dumps(item[2]))
                else:
                    _, parcel_id, event, message, control, once, ended = item
                    pipeline.evalsha(self._record.sha, 2, *parcel_keys(parcel_id),
                        new_epoch(), message, json.dumps(event), CHANNEL if control else parcel_channel(parcel_id),
                        "0" if control else "1", once or "", "1" if event["kind"] == "location" else "0",
                        int(time.time() * 1000), STREAM_KEEP, STREAM_SECONDS * 1000, STREAM_MAX,
                        ENDED_TTL if ended else STREAM_TTL)
            try:
                await pipeline.execute()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis being away must not end the sender
                self._outbox.extendleft(reversed(batch))
                self._lost(e)
                self._renew = True  # the subscription may look fine; renewing it resyncs this process
                self._spill()

    def _here_only(self, event: dict[str, Any]) -> None:
        """Redis is away: this process's sockets get the event, the others do not (a control
        event is kept to be sent again)."""
        self._deliver_soon(event)
        kind = event["kind"]
        if kind in CONTROL:
            self._held.append({**event, "origin": self.origin})
            if len(self._held) <= MAX_HELD:
                return
            kind = self._held.popleft()["kind"]
        self._unpublished[kind] += 1
        if self._metrics is not None:
            self._metrics.broker_unpublished.labels(kind).inc()

    def _spill(self) -> None:
        """Redis is away: what waits to be sent is delivered here only."""
        while self._outbox and not self._connected:
            item = self._outbox.popleft()
            if item[0] == "record":
                self._gaps.add(item[1])
            self._here_only(item[2])

    # -- the subscription ----------------------------------------------------------

    def _change(self, channel: str, subscribe: bool) -> None:
        self._changes[channel] = subscribe
        self._changed.set()

    async def _subscriptions(self) -> None:
        """Send the subscriptions asked for meanwhile, in a few commands; on the subscription's
        connection, so they take effect in the order asked."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            pubsub = self._pubsub
            if pubsub is None:
                continue  # `_subscribe` sends every wanted one when it is back
            changes, self._changes = self._changes, {}
            try:
                for subscribe, channels in ((False, [c for c, on in changes.items() if not on]),
                                            (True, [c for c, on in changes.items() if on])):
                    shard = [c for c in channels if c != BOARDS]
                    if shard:
                        await (pubsub.ssubscribe(*shard) if subscribe else pubsub.sunsubscribe(*shard))
                    if BOARDS in channels:
                        await (pubsub.subscribe(BOARDS) if subscribe else pubsub.unsubscribe(BOARDS))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the listener sees the loss too, and subscribes again
                log.debug("could not change the subscriptions: %s", e)

    async def _subscribe(self) -> Any:
        pubsub = self._subscriber.pubsub()
        self._changes.clear()
        try:
            await pubsub.subscribe(*([CHANNEL, BOARDS] if self._boards else [CHANNEL]))
            if self._watched:
                await pubsub.ssubscribe(*self._watched)
        except BaseException:
            await _quietly(pubsub.aclose())
            raise
        return pubsub

    async def _listen(self) -> None:
        while True:
            if self._pubsub is None:
                try:
                    self._pubsub = await self._subscribe()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.debug("the broker is still away: %s", e)
                    await asyncio.sleep(RETRY_EVERY)
                    continue
                await self._back()
            try:
                message = await self._pubsub.get_message(timeout=POLL)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._lost(e)
                self._spill()
                await self._unsubscribe()
                await asyncio.sleep(RETRY_EVERY)
                continue
            if message is not None:
                self._receive(message)
            if self._renew:
                await self._unsubscribe()
                await asyncio.sleep(RETRY_EVERY)

    def _receive(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ssubscribe":  # a parcel's channel is listened to from now on
            confirmed = self._watched.get(message["channel"].decode())
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind not in ("message", "smessage"):
            return
        data = message["data"]
        try:
            event = json.loads(data)
            origin = event.pop("origin", None)
        except (ValueError, AttributeError, TypeError):
            log.warning("ignoring a message on %s that is not an event: %.80r", message["channel"], data)
            return
        if event.pop("resent", False):
            if self._resync is not None and origin != self.origin:
                self._resync()
        else:
            self._deliver_soon(event)

    async def _unsubscribe(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _quietly(pubsub.aclose())

    # -- losing Redis, and getting it back ---------------------------------------

    def _lost(self, error: BaseException) -> None:
        """One warning per outage, however many calls fail meanwhile."""
        if not self._connected:
            return
        self._connected = False
        self._lost_at = time.monotonic()
        if self._metrics is not None:
            self._metrics.broker_outages.inc()
        log.warning("lost the broker (%s: %s); until it is back, events reach this process's sockets only",
                    type(error).__name__, str(error)[:120])

    async def _back(self) -> None:
        """Subscribed again: the parcels with messages meanwhile start a new epoch, the kept control
        events are sent first, and what this process holds is resynced."""
        self._renew = False
        for confirmed in self._watched.values():
            if not confirmed.done():
                confirmed.set_result(None)
        if self._connected:
            return
        gaps, self._gaps = self._gaps, set()
        try:
            await self._load_scripts()
            for parcel_id in gaps:
                await self._new_epoch(keys=parcel_keys(parcel_id), args=[new_epoch()])
        except Exception as e:
            self._gaps |= gaps
            log.debug("could not start new epochs yet: %s", e)
            await self._unsubscribe()
            return
        self._connected = True
        resend, self._held = self._held, deque()
        for event in resend:
            event["resent"] = True
        self._outbox.extendleft(("publish", CHANNEL, event) for event in reversed(resend))
        self._wake.set()
        resent = Counter(event["kind"] for event in resend)
        log.warning("the broker is back after %.1f s; %s%s; re-checking sockets against the database",
                    time.monotonic() - self._lost_at,
                    f"could not publish {_counts(self._unpublished)} (delivered here only)" if self._unpublished
                    else "every event was published", f"; resending {_counts(resent)}" if resent else "")
        self._unpublished.clear()
        if self._resync is not None:
            self._resync()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._unsubscribe()
        await self._subscriber.aclose()
        await self._redis.aclose()
        await super().close()


def _counts(counts: Counter[str]) -> str:
    """'44 location, 2 geofence events'."""
    kinds = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
    return f"{kinds} {'events' if counts.total() > 1 else 'event'}"


async def _quietly(closing: Awaitable[Any]) -> None:
    try:
        await closing
    except Exception:  # closing a connection Redis already dropped
        pass


def make_broker(url: str, deliver: Deliver, *, metrics: Metrics | None = None,
                resync: Resync | None = None) -> Broker:
    """Redis when `url` is set (`resync` is called each time its subscription is back after a
    loss, and for each resent event), else in-process delivery."""
    return RedisBroker(url, deliver, metrics=metrics, resync=resync) if url else LocalBroker(deliver)
