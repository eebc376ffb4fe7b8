"""What a parcel's fixes say beyond where the truck is: the quality of each fix, the ETA
and the geofence crossings (docs/protocol.md, "What a broadcast carries beyond the
basics" and "Geofences").

Pure and per parcel: `Journey.observe()` takes one accepted fix with its time and the
parcel's status, and answers what its broadcast carries. The hub keeps one Journey per
parcel it publishes for.

The ETA needs no routing service: it is the straight-line distance left divided by how
fast the driver has actually been closing that distance, a least-squares slope of
distance over time across the last `WINDOW` seconds of good fixes. A straight drive
at steady speed gives the exact slope from the second fix on; GPS jitter averages out
across the window; the bends of the road are priced in, because they slow the closing
rate. A driver not closing in (a detour, a long stop) gives no estimate rather than
nonsense, and one update never raises the estimate by more than `MAX_RISE`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from models.parcels import EN_ROUTE

EARTH_RADIUS_M = 6_371_000.0
LOW_ACCURACY_M = 100.0  # a fix less accurate than this is low quality
MAX_SPEED_MS = 70.0  # a jump faster than this from the previous good fix is low quality
WINDOW = 90.0  # seconds of good fixes the closing speed is measured over
MIN_SPAN = 2.0  # seconds the window must cover before it says anything
MIN_CLOSING_MS = 0.5  # slower than this, the driver is not closing in: no estimate
MAX_RISE = 1.25  # one update raises the estimate by at most this factor
EXIT_FACTOR = 1.5  # a zone is left once the driver is this many radii away

ZONES = ("pickup", "destination")


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres between two (lat, lng) points."""
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class Observation:
    """What one fix adds to its broadcast: its quality, the ETA, any geofence crossings."""

    low_quality: bool
    eta: dict[str, Any] | None
    crossings: tuple[tuple[str, str], ...]  # (zone, "enter"|"exit")


@dataclass
class _Closing:
    """Running least-squares sums of (time, distance) over a sliding window, toward one target."""

    target: str
    points: deque[tuple[float, float]] = field(default_factory=deque)
    origin: float | None = None  # times are kept relative to this, for precision
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # Σt, Σd, Σtt, Σtd

    def add(self, t: float, d: float) -> None:
        if self.origin is None:
            self.origin = t
        t -= self.origin
        self.points.append((t, d))
        self._count(t, d, 1)
        while self.points and self.points[0][0] < t - WINDOW:
            old_t, old_d = self.points.popleft()
            self._count(old_t, old_d, -1)

    def _count(self, t: float, d: float, sign: int) -> None:
        s = self.sums
        s[0] += sign * t
        s[1] += sign * d
        s[2] += sign * t * t
        s[3] += sign * t * d

    def closing_speed(self) -> float | None:
        """Metres a second the distance has been shrinking (None: too little to tell)."""
        n = len(self.points)
        if n < 2 or self.points[-1][0] - self.points[0][0] < MIN_SPAN:
            return None
        st, sd, stt, std = self.sums
        denominator = n * stt - st * st
        if denominator <= 0:
            return None
        return -(n * std - st * sd) / denominator


class Journey:
    """One parcel's fixes: their quality, its ETA and the driver's place inside or outside
    the pickup and destination zones."""

    def __init__(self, pickup: dict[str, Any], destination: dict[str, Any], radius_m: float) -> None:
        self.targets = {zone: (point["lat"], point["lng"]) for zone, point in zip(ZONES, (pickup, destination),
                                                                                  strict=True)}
        self.radius_m = radius_m
        self.inside: dict[str, bool] = {}
        self.last_good: tuple[float, float, float] | None = None  # lat, lng, time
        self.closing: _Closing | None = None
        self.last_eta: dict[str, Any] | None = None

    def observe(self, lat: float, lng: float, t: float, status: str, accuracy: float | None = None) -> Observation:
        """One accepted fix at `t` (seconds since the epoch) while the parcel is `status`."""
        target = target_of(status)
        if self._low_quality(lat, lng, t, accuracy):
            # The last estimate stands only while it is still to where the status heads:
            # one made before a status change names a target the parcel no longer has.
            kept = self.last_eta if self.last_eta is not None and self.last_eta["to"] == target else None
            return Observation(True, kept, ())
        self.last_good = (lat, lng, t)
        distances = {zone: distance_m((lat, lng), point) for zone, point in self.targets.items()}
        crossings = tuple(self._cross(zone, d) for zone, d in distances.items())
        self.last_eta = self._eta(distances[target] if target else 0.0, t, target)
        return Observation(False, self.last_eta, tuple(c for c in crossings if c))

    def _low_quality(self, lat: float, lng: float, t: float, accuracy: float | None) -> bool:
        if accuracy is not None and accuracy > LOW_ACCURACY_M:
            return True
        if self.last_good is None:
            return False
        last_lat, last_lng, last_t = self.last_good
        moved = distance_m((last_lat, last_lng), (lat, lng))
        return moved > MAX_SPEED_MS * max(t - last_t, 0.0) + LOW_ACCURACY_M / 10  # a few metres of jitter at once

    def _cross(self, zone: str, d: float) -> tuple[str, str] | None:
        was = self.inside.get(zone, False)
        if not was and d <= self.radius_m:
            self.inside[zone] = True
            return zone, "enter"
        if was and d > self.radius_m * EXIT_FACTOR:
            self.inside[zone] = False
            return zone, "exit"
        return None

    def _eta(self, remaining: float, t: float, target: str | None) -> dict[str, Any] | None:
        """`remaining`: metres from the fix to `target` (None: the parcel heads nowhere we track)."""
        if target is None:
            self.closing = None
            return None
        if self.closing is None or self.closing.target != target:
            self.closing, self.last_eta = _Closing(target), None
        self.closing.add(t, remaining)
        speed = self.closing.closing_speed()
        if speed is None or speed < MIN_CLOSING_MS:
            return None
        seconds = remaining / speed
        previous = self.last_eta
        if previous is not None and previous["to"] == target:
            seconds = min(seconds, previous["seconds"] * MAX_RISE + 1)
        return {"seconds": max(0, round(seconds)), "distance_m": max(0, round(remaining)), "to": target}


def target_of(status: str) -> str | None:
    """Where the driver is heading while a parcel is `status` (None: nowhere we track)."""
    if status == "assigned":
        return "pickup"
    return "destination" if status in EN_ROUTE else None
