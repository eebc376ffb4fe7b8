"""A dispatcher's board client (docs/protocol.md, "The dispatcher's board").

Connects to `/ws/dispatch/?token=…`, expects the `board` snapshot first, then records
every `location_update`: when it arrived, the server's `timestamp` (when it accepted
the location) and the generator's `seq:n:send_ns` from `location.address`. From that:
the board's latency (arrival against the server's timestamp, same machine clock, so
it includes the conflation's wait by design) and whether any parcel got more than one
update within a second.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

TOLERANCE_S = 0.05  # arrival jitter allowed below 1 s between two updates of one parcel


class BoardUnavailable(Exception):
    """The server has no /ws/dispatch/ (HTTP 404) or refused the board."""


@dataclass
class Board:
    url: str
    snapshot_parcels: int = 0
    snapshot_ms: float = 0.0
    updates: list[tuple[int, float, float, int | None]] = field(default_factory=list)  # parcel, arrival, server ts, seq
    others: dict[str, int] = field(default_factory=dict)
    closed: str | None = None
    _closing: bool = False
    _ws: Any = None
    _task: asyncio.Task | None = None

    async def connect(self, wait: float = 30) -> None:
        started = time.monotonic()
        try:
            self._ws = await websocket_connect(self.url, max_message_size=64 * 1024 * 1024, connect_timeout=wait)
        except HTTPClientError as e:
            raise BoardUnavailable(f"HTTP {e.code}") from None
        first = await asyncio.wait_for(self._ws.read_message(), wait)
        if first is None:
            raise BoardUnavailable(f"closed {self._ws.close_code} {self._ws.close_reason}")
        message = json.loads(first)
        if message.get("type") != "board":
            raise BoardUnavailable(f"first message was {message.get('type')!r}: {str(message)[:200]}")
        self.snapshot_parcels = len(message.get("parcels") or [])
        self.snapshot_ms = (time.monotonic() - started) * 1000
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            raw = await self._ws.read_message()
            arrived = time.time()
            if raw is None:
                if not self._closing:
                    self.closed = f"{self._ws.close_code} {self._ws.close_reason}"
                return
            message = json.loads(raw)
            kind = message.get("type")
            if kind != "location_update":
                self.others[kind] = self.others.get(kind, 0) + 1
                continue
            stamp = datetime.fromisoformat(message["timestamp"]).timestamp()
            address = (message.get("location") or {}).get("address") or ""
            seq = int(address.split(":")[1]) if address.startswith("seq:") else None
            self.updates.append((message["parcel_id"], arrived, stamp, seq))

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            self._ws.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except TimeoutError:
                self._task.cancel()

    def summary(self, window: tuple[float, float]) -> dict[str, Any]:
        """Latency and the one-a-second rule over the updates that arrived in `window` (time.time()).

        Arrival times carry the delivery's jitter, so two updates a conflating server sent a
        second apart can arrive closer; the rule is judged by the count instead: over a window
        of T seconds a parcel may get at most T + 1 updates."""
        rows = [u for u in self.updates if window[0] <= u[1] <= window[1]]
        latencies = sorted((arrival - stamp) * 1000 for _, arrival, stamp, _ in rows)
        by_parcel: dict[int, list[float]] = {}
        for parcel_id, arrival, _, _ in rows:
            by_parcel.setdefault(parcel_id, []).append(arrival)
        gaps = [b - a for times in by_parcel.values() for a, b in zip(times, times[1:], strict=False)]
        seconds = window[1] - window[0]
        most = max((len(t) for t in by_parcel.values()), default=0)

        def pct(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

        return {
            "window_s": round(seconds, 1), "updates": len(rows), "parcels_updated": len(by_parcel),
            "updates_per_s": round(len(rows) / seconds, 1) if seconds > 0 else None,
            "per_parcel_per_s": round(len(rows) / seconds / len(by_parcel), 3) if by_parcel and seconds > 0 else None,
            "most_for_one_parcel": most,
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": round(latencies[-1], 1) if latencies else None},
            "min_gap_s": round(min(gaps), 3) if gaps else None,
            "gaps_under_1s": sum(g < 1.0 - TOLERANCE_S for g in gaps),
            "at_most_one_per_second": most <= seconds + 1,
        }

    def state(self) -> dict[str, Any]:
        return {"snapshot_parcels": self.snapshot_parcels, "snapshot_ms": round(self.snapshot_ms, 1),
                "other_messages": self.others, "closed_by_server": self.closed}
