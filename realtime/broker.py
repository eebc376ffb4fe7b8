"""Fan-out between processes: in-process by default, Redis pub/sub with BROKER_URL.

A broker carries hub events (a location, a status change, a driver revoked) to
every process's hub, in the order they were published. With one process the
event is delivered at once; with Redis each process publishes through one queue
(so its own events keep their order) and listens on one channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("parcel.broker")

Deliver = Callable[[dict[str, Any]], None]
CHANNEL = "parcel-tracking:events"


class BrokerUnavailable(RuntimeError):
    """BROKER_URL is set but the broker cannot be reached."""


class LocalBroker:
    """One process: publishing is delivering."""

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def start(self) -> None:
        pass

    def publish(self, event: dict[str, Any]) -> None:
        self._deliver(event)

    async def ping(self) -> None:
        """Nothing to reach: /healthz reports the broker as "off"."""
        return None

    async def close(self) -> None:
        pass


MAX_PIPELINE = 500  # events in one round trip to Redis


class RedisBroker:
    """Several processes: every event goes through one Redis channel."""

    def __init__(self, url: str, deliver: Deliver) -> None:
        import redis.asyncio as redis  # only needed when BROKER_URL is set

        self._redis = redis.from_url(url)
        self._deliver = deliver
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._pubsub = None

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._pubsub.subscribe(CHANNEL)
        except Exception as e:  # redis raises its own ConnectionError, TimeoutError, ...
            raise BrokerUnavailable(f"cannot reach the broker at BROKER_URL: {e}") from None
        self._tasks = [asyncio.ensure_future(self._listen()), asyncio.ensure_future(self._send())]

    def publish(self, event: dict[str, Any]) -> None:
        self._outbox.put_nowait(json.dumps(event))

    async def ping(self) -> bool:
        return await self._redis.ping()

    async def _send(self) -> None:
        """Publish what is queued, everything waiting at once in one pipeline: one round trip
        for many events, in order (one `publish` awaited per event held every event behind
        the one before it)."""
        while True:
            payloads = [await self._outbox.get()]
            while not self._outbox.empty() and len(payloads) < MAX_PIPELINE:
                payloads.append(self._outbox.get_nowait())
            pipeline = self._redis.pipeline(transaction=False)
            for payload in payloads:
                pipeline.publish(CHANNEL, payload)
            try:
                await pipeline.execute()
            except Exception:  # the broker being down must not end the publisher
                log.exception("could not publish %d events to the broker", len(payloads))

    async def _listen(self) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    self._deliver(json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lost the broker subscription; retrying in 1 s")
                await asyncio.sleep(1)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self._redis.aclose()


def make_broker(url: str, deliver: Deliver) -> LocalBroker | RedisBroker:
    return RedisBroker(url, deliver) if url else LocalBroker(deliver)
