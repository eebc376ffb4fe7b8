"""Fan-out between processes: in-process by default, Redis pub/sub with BROKER_URL.

A broker carries hub events (a location, a status change, a driver revoked) to
every process's hub. Both kinds share one base, `Broker`: publishing queues the event
for this process's own sockets, and they get it on the next turn of the event loop, in
the order it was published, whatever Redis is doing (so the single process of the tests
and of a small deployment has the ordering of several). With Redis the event is also
published, through one queue (so this process's events keep their order), for the other
processes, and each process ignores its own events when Redis hands them back (`origin`).

While Redis cannot be reached, each process goes on serving its own sockets. What it
could not publish is counted (`parcel_broker_unpublished_total{kind}`); the control
events (a user's sessions ended, a parcel's links revoked, a parcel changed) are kept
and sent again, marked `resent`, when Redis is back. What the other processes published
meanwhile is lost, so once the subscription is back the hub re-checks what it holds
against the database (`resync`). A resent event is old news (newer changes may have
been made since), so it is not applied either: it asks for that re-check too.
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from realtime.metrics import Metrics

log = logging.getLogger("parcel.broker")

Deliver = Callable[[dict[str, Any]], None]
Resync = Callable[[], None]  # "check what you hold against the database" (it schedules the work)
CHANNEL = "parcel-tracking:events"
KINDS = ("location", "geofence", "parcel", "user", "links")
CONTROL = frozenset(("parcel", "user", "links"))  # kept while Redis is away, sent when it is back
MAX_PIPELINE = 500  # events in one round trip to Redis
MAX_HELD = 10_000  # control events kept while Redis is away; older ones are dropped (the resync covers them)
RETRY_EVERY = 1.0  # seconds between two attempts to subscribe again
POLL = 1.0  # seconds the listener waits for a message before looking at its state again


class BrokerUnavailable(RuntimeError):
    """BROKER_URL is set but the broker cannot be reached."""


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
        """Hand `event` to every process's hub, this one's included; never waits."""

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


class LocalBroker(Broker):
    """One process: publishing is delivering, on the next loop turn."""

    async def start(self) -> None:
        pass

    def publish(self, event: dict[str, Any]) -> None:
        self._deliver_soon(event)

    async def ping(self) -> None:
        """Nothing to reach: /healthz reports the broker as "off"."""
        return None


class RedisBroker(Broker):
    """Several processes: every event is delivered here on the next loop turn and published on one Redis channel."""

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
        self.origin = uuid.uuid4().hex  # this process's events, when Redis hands them back
        self._metrics = metrics
        self._resync = resync
        self._outbox: deque[dict[str, Any]] = deque()  # events waiting to be published
        self._wake = asyncio.Event()
        self._held: deque[dict[str, Any]] = deque()  # control events kept while Redis is away
        self._unpublished: Counter[str] = Counter()  # by kind, since Redis was lost
        self._connected = False
        self._renew = False  # the publisher lost Redis: the subscription is renewed and resynced
        self._lost_at = 0.0
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task] = []
        if metrics is not None:
            for kind in KINDS:  # every series exists from the start, at 0
                metrics.broker_unpublished.labels(kind)

    async def start(self) -> None:
        try:
            self._pubsub = await self._subscribe()
        except Exception as e:  # redis raises its own ConnectionError, TimeoutError, ...
            raise BrokerUnavailable(f"cannot reach the broker at BROKER_URL: {e}") from None
        self._connected = True
        self._tasks = [asyncio.ensure_future(self._listen()), asyncio.ensure_future(self._send())]

    def publish(self, event: dict[str, Any]) -> None:
        self._deliver_soon(event)  # this process's sockets never wait for Redis
        if self._connected:
            self._outbox.append({**event, "origin": self.origin})
            self._wake.set()
        elif event["kind"] in CONTROL:
            self._hold({**event, "origin": self.origin})
        else:
            self._give_up(event["kind"])

    async def ping(self) -> bool:
        return await self._redis.ping()

    # -- publishing --------------------------------------------------------------

    async def _send(self) -> None:
        """Publish what is queued, everything waiting at once in one pipeline: one round trip
        for many events, in order (one `publish` awaited per event held every event behind
        the one before it)."""
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), MAX_PIPELINE))]
            pipeline = self._redis.pipeline(transaction=False)
            for event in batch:
                pipeline.publish(CHANNEL, json.dumps(event))
            try:
                await pipeline.execute()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis being away must not end the publisher
                self._outbox.extendleft(reversed(batch))
                self._lost(e)
                self._renew = True  # the subscription may look fine; renewing it resyncs this process
                self._spill()

    def _give_up(self, kind: str) -> None:
        self._unpublished[kind] += 1
        if self._metrics is not None:
            self._metrics.broker_unpublished.labels(kind).inc()

    def _hold(self, event: dict[str, Any]) -> None:
        if event["kind"] not in CONTROL:
            return self._give_up(event["kind"])
        self._held.append(event)
        if len(self._held) > MAX_HELD:
            self._give_up(self._held.popleft()["kind"])

    def _spill(self) -> None:
        """Redis is away: what waits to be published is kept (control events) or given up."""
        while self._outbox and not self._connected:
            self._hold(self._outbox.popleft())

    # -- the subscription ----------------------------------------------------------

    async def _subscribe(self) -> Any:
        pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
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
                self._back()
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._lost(e)
                self._spill()
                await self._unsubscribe()
                await asyncio.sleep(RETRY_EVERY)
                continue
            if message is not None:
                self._receive(message["data"])
            if self._renew:
                await self._unsubscribe()
                await asyncio.sleep(RETRY_EVERY)

    def _receive(self, data: bytes) -> None:
        try:
            event = json.loads(data)
            origin = event.pop("origin", None)
        except (ValueError, AttributeError, TypeError):
            log.warning("ignoring a message on %s that is not an event: %.80r", CHANNEL, data)
            return
        if origin == self.origin:  # this process delivered its own when it published them
            return
        if event.pop("resent", False):
            if self._resync is not None:
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

    def _back(self) -> None:
        """Subscribed again: send the kept control events first, and resync what this process holds."""
        self._renew = False
        if self._connected:
            return
        self._connected = True
        resend, self._held = self._held, deque()
        for event in resend:
            event["resent"] = True
        self._outbox.extendleft(reversed(resend))
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
    """Redis pub/sub when `url` is set (`resync` is called each time its subscription is back
    after a loss, and for each resent event), else in-process delivery."""
    return RedisBroker(url, deliver, metrics=metrics, resync=resync) if url else LocalBroker(deliver)
