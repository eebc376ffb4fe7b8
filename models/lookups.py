"""The reads a socket's handshake makes (its user, its parcel, its share link), shared and batched.

After a restart or a network blip every page reconnects within a second or two. One
`find_one` per handshake queued thousands of reads behind each other in the database
until the first ones' deadline passed, and sockets were refused as if the database were
down (docs/protocol.md, "Reconnect storms"). Here a read waits in a bounded queue, reads
of the same id are one read, and the ids asked for meanwhile go out together as `$in`
queries, a few at a time; only the query itself runs under the database deadline, so a
socket is refused with 1013 only when the database really did not answer.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo

from models import parcels, shares, users
from models.access import User
from models.db import Database

BATCH = 100  # ids in one round (find_by_ids asks IN_CHUNK of them per query)
CONCURRENT = 2  # rounds in flight at once: more only queue inside the database
MAX_WAITING = 50_000  # ids waiting for a round; past it a handshake is refused as busy


class Busy(RuntimeError):
    """Too many handshakes are waiting for the database: try again in a moment (1013)."""


class Batched:
    """`get(id)`: the document with that id, or None, read together with every other id
    asked for while earlier rounds were under way."""

    def __init__(self, fetch: Callable[[list[Any]], Awaitable[dict[Any, Any]]], deadline: float) -> None:
        self._fetch = fetch
        self._deadline = deadline
        self._waiting: dict[int, asyncio.Future[Any]] = {}  # not yet in a round
        self._asked: dict[int, asyncio.Future[Any]] = {}  # in a round now
        self._rounds = 0
        self.askers = 0  # handshakes waiting for a read now
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: int | str) -> Any:
        future = self._asked.get(key) or self._waiting.get(key)
        if future is None:
            if len(self._waiting) >= MAX_WAITING:
                raise Busy("the server is busy; try again in a moment")
            future = asyncio.get_running_loop().create_future()
            self._waiting[key] = future
            if len(self._waiting) == 1:
                # On the next turn, so that this turn's handshakes join the round; in a fresh
                # context, so that the round's deadline is its own, not the first asker's.
                asyncio.get_running_loop().call_soon(self._start_rounds, context=contextvars.Context())
        self.askers += 1
        try:
            return await asyncio.shield(future)  # one asker leaving does not cancel the others' read
        finally:
            self.askers -= 1

    def _start_rounds(self) -> None:
        while self._waiting and self._rounds < CONCURRENT:
            keys = list(self._waiting)[:BATCH]
            for key in keys:
                self._asked[key] = self._waiting.pop(key)
            self._rounds += 1
            task = asyncio.ensure_future(self._round(keys))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _round(self, keys: list[int]) -> None:
        try:
            with pymongo.timeout(self._deadline):
                found = await self._fetch(keys)
        except Exception as e:  # every asker gets the database's answer: 1013 if it did not answer
            for key in keys:
                future = self._asked.pop(key)
                if not future.done():
                    future.set_exception(e)
                future.exception()  # retrieved: an asker that left must not leave it "never retrieved"
        else:
            for key in keys:
                future = self._asked.pop(key)
                if not future.done():
                    future.set_result(found.get(key))
        finally:
            self._rounds -= 1
            self._start_rounds()


class Lookups:
    """The handshakes' reads: users (without their password hash) and parcels by id, share links by token."""

    def __init__(self, db: Database, deadline: float) -> None:
        self._users = Batched(lambda ids: users.get_users(db, ids), deadline)
        self._parcels = Batched(lambda ids: parcels.get_parcels(db, ids), deadline)
        self._links = Batched(lambda keys: shares.get_links(db, keys), deadline)

    @property
    def waiting(self) -> int:
        """Handshakes waiting for the database now."""
        return self._users.askers + self._parcels.askers + self._links.askers

    async def user(self, user_id: int) -> User | None:
        return await self._users.get(user_id)

    async def parcel(self, parcel_id: int) -> dict[str, Any] | None:
        return await self._parcels.get(parcel_id)

    async def share_link(self, token: str) -> dict[str, Any] | None:
        return await self._links.get(token)
