"""The database handle: one AsyncMongoClient, the collections, their indexes, id counters
and retention.

Every query in `models/` has a shape the embedded server answers from an index
(docs/protocol.md, "Query shapes"); the indexes below are those shapes' indexes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

from gridfs import AsyncGridFSBucket
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, UpdateOne, _csot
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

SEQUENCES = ("users", "parcels", "api_keys", "webhooks")
MAX_ID = 2**63 - 1  # ids are BSON int64
ID = r"[0-9]{1,18}"  # an id as it appears in a URL (routes, query arguments): always fits MAX_ID
SCHEMA_VERSION = 3  # 2: parcels carry `seq` (their id again, for ranges) and `timeline`; 3: users carry `search`


def parse_id(text: str) -> int | None:
    """The id a URL names, or None when the text is not one (ASCII digits, at most 18)."""
    return int(text) if re.fullmatch(ID, text) else None


def json_id(value: object) -> int | None:
    """The id a JSON body names, or None: a whole number (not a boolean) within int64."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID else None


def next_window(size: float, found: int, wanted: int) -> float:
    """The size of the next window of a list walked window by window (parcels by id,
    samples by time): double it past an empty stretch; after a window that held `found`
    matches, size the next for the `wanted` still missing at that density (a quarter
    more), growing at most fourfold. Each query then matches about what the page needs:
    the embedded server's cost is in the documents a query matches, not in the index."""
    if found == 0:
        return size * 2
    return min(size * 4, max(size / 4, wanted * size / found * 1.25))


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or refuses to set up."""


IN_CHUNK = 25  # ids in one `$in` (the embedded server's `$in` costs the square of its length)


async def find_by_ids(collection: Any, ids: Iterable[int | None],
                      projection: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """The documents with these ids (None skipped), by id: `$in` queries of IN_CHUNK ids each
    (the embedded server's `$in` costs the square of its length: 100 ids 17 ms, 25 ids 1 ms)."""
    wanted = sorted({i for i in ids if i is not None})
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(wanted), IN_CHUNK):
        async for doc in collection.find({"_id": {"$in": wanted[start:start + IN_CHUNK]}}, projection):
            found[doc["_id"]] = doc
    return found


T = TypeVar("T")


async def off_the_clock(work: Awaitable[T]) -> T:
    """Await work that is not the database's (bcrypt in a thread) without spending the
    request's database deadline on it: the deadline moves on by the time it took.

    A request's database calls share one `pymongo.timeout` (handlers/base.py), and a nested
    `pymongo.timeout` can only shorten it; so this moves PyMongo's own deadline, which the
    enclosing `with` block restores on its way out. Without it, 30 sign-ups at once queued
    behind each other's bcrypt and answered 503 "the database is unavailable"."""
    started = time.monotonic()
    try:
        return await work
    finally:
        deadline = _csot.get_deadline()
        if deadline != float("inf"):
            _csot.DEADLINE.set(deadline + time.monotonic() - started)


def unreachable(error: BaseException) -> bool:
    """Is this the database not answering (down, frozen, too slow), rather than refusing a request?"""
    return isinstance(error, ConnectionFailure) or (isinstance(error, PyMongoError) and error.timeout)


def utcnow() -> datetime:
    """Now, in UTC, at the millisecond precision BSON dates keep."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def now_ms() -> int:
    """Now, in whole milliseconds since the epoch (the live path's clock: cheaper than a datetime)."""
    return time.time_ns() // 1_000_000


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@lru_cache(maxsize=4)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))


def stamp(ms: int) -> str:
    """`iso()` of a time in milliseconds, the date and time formatted once a second (a
    broadcast's timestamp is made thousands of times a second)."""
    second, milli = divmod(ms, 1000)
    return f"{_second_text(second)}{milli:03d}Z"


def parse_iso(text: str) -> datetime:
    """An ISO 8601 timestamp from a client; one without a zone is UTC. ValueError if it is not one."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime | None) -> str | None:
    """`2026-01-08T10:15:30.123Z`: the one timestamp format of the API and the socket."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    # The year by hand: strftime's %Y writes the year 902 as "902", which is no ISO 8601 time.
    return f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Database:
    """The app's collections on one client; create it inside the IOLoop that uses it."""

    def __init__(self, uri: str, name: str, retention_days: int = 90, server_timeout: float = 5.0,
                 ttl_index: bool = True) -> None:
        self.client: AsyncMongoClient = AsyncMongoClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=int(server_timeout * 1000), appname="parcel-tracking"
        )
        self.db = self.client[name]
        self.users = self.db["users"]
        self.parcels = self.db["parcels"]
        self.locations = self.db["locations"]
        self.counters = self.db["counters"]
        self.share_links = self.db["share_links"]  # by token (_id); models/shares.py
        self.outbox = self.db["outbox"]  # e-mails and webhooks to send, by key (_id); models/outbox.py
        self.email_addresses = self.db["email_addresses"]  # recipients' unsubscribe tokens; models/mail.py
        self.proofs = AsyncGridFSBucket(self.db, bucket_name="proofs")  # proofs.files, proofs.chunks; models/proofs.py
        self.api_keys = self.db["api_keys"]  # models/keys.py
        self.webhooks = self.db["webhooks"]  # models/webhooks.py
        self.webhook_deliveries = self.db["webhook_deliveries"]  # each attempt's outcome, the last 100 per hook kept
        self.retention = timedelta(days=retention_days)
        self.ttl_index = ttl_index

    async def ensure_indexes(self) -> None:
        """Indexes, counters and schema in place: the first thing every command asks of the
        database, so an unreachable one is reported here, in one line."""
        try:
            await self._create_counters()
            await self._migrate()
            await self._create_indexes()
        except PyMongoError as e:
            # PyMongo appends its timeouts and topology to the reason: keep the reason.
            reason = (str(e) or type(e).__name__).splitlines()[0].split(" (configured timeouts")[0]
            raise DatabaseUnavailable(f"cannot use the database: {reason[:200]}") from None

    async def _create_indexes(self) -> None:
        await self.users.create_index("email", unique=True)  # stored lower-cased
        await self.users.create_index("role")
        # A page of people is a window of ids within a role, a search key, or both
        # (models.users.find_people): a range on `_id` after equalities in a compound index is served.
        await self.users.create_index([("role", ASCENDING), ("_id", ASCENDING)])
        await self.users.create_index([("search", ASCENDING), ("_id", ASCENDING)])
        await self.users.create_index([("role", ASCENDING), ("search", ASCENDING), ("_id", ASCENDING)])
        # A page of parcels is a window of `seq` (the id) within a scope: everyone's, one
        # status's, one owner's or one driver's. The embedded server serves equality
        # prefixes plus one range, and no range on `_id`.
        await self.parcels.create_index("seq", unique=True)
        await self.parcels.create_index([("status", ASCENDING), ("seq", ASCENDING)])
        await self.parcels.create_index([("owner_id", ASCENDING), ("seq", ASCENDING)])
        await self.parcels.create_index([("driver_id", ASCENDING), ("seq", ASCENDING)])
        await self.parcels.create_index([("driver_id", ASCENDING), ("status", ASCENDING), ("seq", ASCENDING)])
        await self.locations.create_index([("parcel_id", ASCENDING), ("timestamp", ASCENDING)])
        await self._retention_index()
        # Expired links go in the hourly retention pass (models.shares.prune); an expired one is refused
        # before then. No TTL index: a command on MONGODB_URI and a server on the same database would
        # ask for the same index with and without one (an error), and a link is small.
        await self.share_links.create_index("expires_at")
        # GridFS's own indexes (the names it would give them), made here: models.proofs skips the
        # check GridFS makes before every upload, a scan of both collections on the embedded server.
        await self.db["proofs.files"].create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])
        await self.db["proofs.chunks"].create_index([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)
        # The outbox claims the pending entry due longest ago (models.outbox.claim); an unsubscribe
        # link names its address by a token (models.mail).
        await self.outbox.create_index([("state", ASCENDING), ("due_at", ASCENDING)])
        await self.email_addresses.create_index("token", unique=True)
        # Webhooks subscribed to an event's type (models/webhooks.py), and a hook's attempts newest first.
        await self.webhooks.create_index("events")
        await self.webhook_deliveries.create_index([("hook_id", ASCENDING), ("at", ASCENDING)])

    async def _retention_index(self) -> None:
        """The index on a sample's time that retention deletes by: a TTL index, so MongoDB
        expires samples itself, unless `ttl_index` is off. It is off for the embedded
        server: its TTL sweeper decodes the whole collection every minute under its lock
        (16 s of stalled reads at a year's volume) and ignores the setting that would turn
        it off; `prune_locations` applies the same rule there as one indexed delete."""
        seconds = int(self.retention.total_seconds())
        options = {"expireAfterSeconds": seconds} if self.ttl_index else {}
        existing = (await self.locations.index_information()).get("retention")
        if existing is not None and existing.get("expireAfterSeconds") != options.get("expireAfterSeconds"):
            await self.locations.drop_index("retention")  # the retention period or the server changed
        await self.locations.create_index([("timestamp", ASCENDING)], name="retention", **options)

    async def _create_counters(self) -> None:
        # Created up front: concurrent upserts of a missing counter lose the race with `None`.
        for sequence in SEQUENCES:
            try:
                await self.counters.insert_one({"_id": sequence, "value": 0})
            except DuplicateKeyError:
                pass

    async def _migrate(self) -> None:
        """Bring parcels and users stored by an older version up to SCHEMA_VERSION (once: a full pass)."""
        schema = await self.counters.find_one({"_id": "schema"})
        if schema is None and await self.counters.find_one({"_id": "parcels", "value": 0}) \
                and await self.counters.find_one({"_id": "users", "value": 0}):
            # a fresh database: nothing to migrate
            await self.counters.insert_one({"_id": "schema", "value": SCHEMA_VERSION})
            return
        if schema is not None and schema["value"] >= SCHEMA_VERSION:
            return
        async for doc in self.parcels.find({"seq": {"$exists": False}}, {"_id": 1, "status": 1, "created_at": 1}):
            timeline = [{"status": "pending", "timestamp": doc.get("created_at")}]
            if doc["status"] != "pending":
                timeline.append({"status": doc["status"], "timestamp": None})  # when is not known
            await self.parcels.update_one({"_id": doc["_id"]}, {"$set": {"seq": doc["_id"], "timeline": timeline}})
        for old in ("owner_id_1__id_1", "driver_id_1__id_1"):  # served the version 1 lists
            if old in await self.parcels.index_information():
                await self.parcels.drop_index(old)
        await self._add_search_keys()
        await self.counters.update_one({"_id": "schema"}, {"$set": {"value": SCHEMA_VERSION}}, upsert=True)

    async def _add_search_keys(self) -> None:
        """Schema 3: every user gets the `search` keys a dispatcher finds them by (once: a full pass)."""
        from models.users import search_keys  # models.users builds on this module

        writes: list[UpdateOne] = []
        async for doc in self.users.find({}, {"email": 1, "name": 1}):
            keys = search_keys(doc["email"], doc.get("name", ""))
            writes.append(UpdateOne({"_id": doc["_id"]}, {"$set": {"search": keys}}))
            if len(writes) == 500:
                await self.users.bulk_write(writes, ordered=False)
                writes = []
        if writes:
            await self.users.bulk_write(writes, ordered=False)

    async def next_id(self, sequence: str) -> int:
        """The next integer id of a sequence (users, parcels), atomically."""
        doc = await self.counters.find_one_and_update(
            {"_id": sequence}, {"$inc": {"value": 1}}, return_document=ReturnDocument.AFTER
        )
        return int(doc["value"])

    async def reserve_ids(self, sequence: str, n: int) -> range:
        """`n` consecutive ids of a sequence in one atomic step (an import's parcels), as a range."""
        doc = await self.counters.find_one_and_update(
            {"_id": sequence}, {"$inc": {"value": n}}, return_document=ReturnDocument.AFTER
        )
        last = int(doc["value"])
        return range(last - n + 1, last + 1)

    async def last_id(self, sequence: str) -> int:
        """The highest id handed out so far."""
        doc = await self.counters.find_one({"_id": sequence})
        return int(doc["value"]) if doc else 0

    async def prune_locations(self, now: datetime | None = None) -> int:
        """Delete the samples older than the retention period; returns how many went."""
        cutoff = (now or utcnow()) - self.retention
        result = await self.locations.delete_many({"timestamp": {"$lt": cutoff}})
        return result.deleted_count

    async def ping(self) -> bool:
        await self.client.admin.command("ping")
        return True

    async def close(self) -> None:
        await self.client.close()
