"""The database handle: one AsyncMongoClient, the collections, indexes and id counters."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import PyMongoError


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or refuses to set up."""


def utcnow() -> datetime:
    """Now, in UTC, at the millisecond precision BSON dates keep."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(moment: datetime | None) -> str | None:
    """`2026-01-08T10:15:30.123Z`: the one timestamp format of the API and the socket."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Database:
    """The app's collections on one client; create it inside the IOLoop that uses it."""

    def __init__(self, uri: str, name: str) -> None:
        self.client: AsyncMongoClient = AsyncMongoClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=5000, appname="parcel-tracking"
        )
        self.db = self.client[name]
        self.users = self.db["users"]
        self.parcels = self.db["parcels"]
        self.locations = self.db["locations"]
        self.counters = self.db["counters"]

    async def ensure_indexes(self) -> None:
        """Every query the app makes has an index (the embedded server scans without one).

        This is the first thing every command asks of the database, so an unreachable
        one is reported here, in one line."""
        try:
            await self._create_indexes()
        except PyMongoError as e:
            # PyMongo appends its timeouts and topology to the reason: keep the reason.
            reason = (str(e) or type(e).__name__).splitlines()[0].split(" (configured timeouts")[0]
            raise DatabaseUnavailable(f"cannot use the database: {reason[:200]}") from None

    async def _create_indexes(self) -> None:
        await self.users.create_index("email", unique=True)  # stored lower-cased
        await self.users.create_index("role")
        await self.parcels.create_index([("owner_id", ASCENDING), ("_id", ASCENDING)])
        await self.parcels.create_index([("driver_id", ASCENDING), ("_id", ASCENDING)])
        await self.locations.create_index([("parcel_id", ASCENDING), ("timestamp", ASCENDING), ("_id", ASCENDING)])

    async def next_id(self, sequence: str) -> int:
        """The next integer id of a sequence (users, parcels), atomically."""
        doc = await self.counters.find_one_and_update(
            {"_id": sequence}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return int(doc["value"])

    async def close(self) -> None:
        await self.client.close()
