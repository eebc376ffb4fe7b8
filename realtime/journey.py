"""What a parcel's fixes say beyond where the truck is: the quality of each fix, the ETA
and the geofence crossings (docs/protocol.md, "What a broadcast carries beyond the
basics" and "Geofences").

Pure and per parcel: `Journey.observe()` takes one accepted fix with its time and the
parcel's status, and answers what its broadcast carries. The hub keeps one Journey per
parcel it publishes for.

The ETA needs no routing service. It is the straight-line distance left, times how much
longer than a straight line the road has been (the detour factor: metres driven per metre
of straight line between the ends of the last `DETOUR_WINDOW_M` driven; `ROAD_DETOUR` for
the distance beyond that, which no measurement has seen), divided by the driver's pace
(metres driven per second over the last `SPEED_WINDOW` seconds, the first `LONG_STOP`
seconds of a stop counting `STOP_WEIGHT`: lights recur, but a long stop is not traffic).
The detour factor does not care which way the road heads, so a leg that turns away from
the target no longer makes the estimate jump (issue 17: the closing speed it replaces
collapsed on every such leg); a straight drive at steady speed gives the exact time from
the second fix on. That raw estimate goes through an exponential filter that counts down
with the clock while the driver moves and holds during a stop, and moves by at most
`MAX_CHANGE_PER_S` a second (and `MAX_CHANGE` an update), up or down. A driver who has
not closed in over the detour window (driving away) gets no estimate; nor does one
stopped longer than `GIVE_UP_STOP` seconds.

Each estimate says how sure it is, additively to the contract: a "confidence" (low,
medium, high) and a "range" of seconds, from the doubt `_Estimator._confidence` adds up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from models.parcels import EN_ROUTE

EARTH_RADIUS_M = 6_371_000.0
LOW_ACCURACY_M = 100.0  # a fix less accurate than this is low quality
MAX_SPEED_MS = 70.0  # a jump faster than this from the previous good fix is low quality
EXIT_FACTOR = 1.5  # a zone is left once the driver is this many radii away

# The ETA (module docstring).
DEADBAND_M = 15.0  # the odometer moves on only once the fixes are this far from where it last did
STOP_AFTER = 10.0  # seconds without the odometer moving that make a stop
STOP_WEIGHT = 0.5  # the share of a stop's time that counts against the driver's pace
SPEED_WINDOW = 240.0  # seconds (stops weighted) the pace is measured over
DETOUR_WINDOW_M = 4000.0  # metres driven the detour factor is measured over ...
DETOUR_HISTORY = 900.0  # ... and at most this many seconds
DETOUR_PRIOR_M = 300.0  # metres of straight road assumed before any is measured
ROAD_DETOUR = 1.3  # the usual detour factor of city roads, for the road beyond the window
MAX_DETOUR = 2.5  # more road than this per metre closed is not closing in: no estimate
MIN_SPAN = 2.0  # seconds the pace must be measured over before it says anything ...
MIN_DRIVEN_M = 20.0  # ... and metres driven
BUCKET = 2.0  # seconds of fixes averaged before the odometer looks at them
RECORD_EVERY = 1.0  # seconds between the fixes kept for the windows (fixes may come 10 a second)
SMOOTHING = 40.0  # seconds: the time constant of the filter
MAX_CHANGE_PER_S = 0.02  # the estimate moves by at most 2 % a second ...
MAX_CHANGE = 0.2  # ... and 20 % an update, up or down (the contract allows 25 % up)
GIVE_UP_STOP = 300.0  # seconds stopped after which there is no estimate
SURE_AFTER = 120.0  # seconds of measuring before an estimate may be "high"
UNSURE_BEFORE = 45.0  # seconds of measuring before an estimate may be more than "low" (or is filtered)
LONG_STOP = 60.0  # seconds stopped that make an estimate "low" (and no longer slow the pace)
SPREAD_TIME = 60.0  # seconds: the time constant of the disagreement measure
BASE_DOUBT = 0.08  # the doubt of an estimate on a road fully measured and steady ...
BEYOND_DOUBT = 0.3  # ... plus this times the share of the distance beyond the measured road
TWIST_DOUBT = 0.3  # ... plus this times how much the measured road exceeds a straight line
HIGH_DOUBT = 0.15  # under this an estimate may be "high" ...
LOW_DOUBT = 0.3  # ... over this it is "low"

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
    # The first fix, in transit, entering the destination's zone or with an ETA to it under
    # `arriving_within` (docs/protocol.md, "Events").
    arriving: bool = False


class _Mark(NamedTuple):
    """One kept fix: its time, the stop-weighted clock, the odometer and the distance left."""

    t: float
    clock: float
    driven: float
    left: float
    point: tuple[float, float]


@dataclass
class _Estimator:
    """The ETA toward one target: an odometer, two windows of kept fixes and the filter."""

    target: str
    since: float = 0.0  # when the estimate (re)started
    anchor: tuple[float, float] | None = None  # where the odometer last moved on
    anchor_t: float = 0.0
    odometer: float = 0.0  # metres driven up to the anchor
    bucket: list[tuple[float, float]] = field(default_factory=list)  # fixes not yet averaged
    bucket_t: float = 0.0
    clock: float = 0.0  # seconds, a stop's counting STOP_WEIGHT
    last_t: float = 0.0
    detour: deque[_Mark] = field(default_factory=deque)
    pace: deque[_Mark] = field(default_factory=deque)
    seconds: float | None = None  # the filtered estimate
    twist: float = 1.0  # the last detour factor measured
    spread: float = 0.0  # mean squared relative disagreement of the raw estimates with the filter

    def add(self, point: tuple[float, float], t: float, left: float) -> dict[str, Any] | None:
        """One good fix `left` metres (straight) from the target; the estimate, or None."""
        if self.anchor is None:
            self.since, self.anchor, self.anchor_t, self.last_t, self.bucket_t = t, point, t, t, t
            self._keep(_Mark(t, 0.0, 0.0, left, point))
            return None
        dt = max(0.0, t - self.last_t)
        self.last_t = t
        self._odometer(point, t)
        moved = distance_m(self.anchor, point)
        stopped = t - self.anchor_t if t - self.anchor_t > STOP_AFTER else 0.0
        # A stop slows the pace for its first LONG_STOP seconds only: a longer one is a break
        # or another customer's door, not the traffic, and the drive left is as long as before.
        self.clock += dt * (STOP_WEIGHT if STOP_AFTER < stopped <= LONG_STOP else 0.0 if stopped else 1.0)
        now = _Mark(t, self.clock, self.odometer + moved, left, point)
        if t - self.pace[-1].t >= RECORD_EVERY:
            self._keep(now)

        detour = self._detour(now)
        if detour is None or stopped > GIVE_UP_STOP:
            self.seconds = None  # not closing in: what comes next starts afresh
            return None
        raw = self._raw(now, detour)
        if self.seconds is None:
            if raw is None:
                return None
            self.seconds, self.spread, self.since = raw, 0.0, t  # a fresh start is unsure again
        else:
            self._filter(raw, dt, moving=not stopped, settled=t - self.since >= UNSURE_BEFORE)
        confidence, doubt = self._confidence(now, stopped)
        return {"seconds": max(0, round(self.seconds)), "distance_m": max(0, round(left)), "to": self.target,
                "confidence": confidence,
                "range": [max(0, round(self.seconds * (1 - min(doubt, 0.8)))),
                          max(0, round(self.seconds * (1 + 1.5 * doubt)))]}

    def _odometer(self, point: tuple[float, float], t: float) -> None:
        """The odometer moves on by whole steps of at least DEADBAND_M between the averages of
        the fixes of BUCKET seconds: ten jittery fixes a second must not add up to metres driven."""
        self.bucket.append(point)
        if t - self.bucket_t < BUCKET:
            return
        mean = (sum(p[0] for p in self.bucket) / len(self.bucket), sum(p[1] for p in self.bucket) / len(self.bucket))
        self.bucket, self.bucket_t = [], t
        assert self.anchor is not None
        moved = distance_m(self.anchor, mean)
        if moved >= DEADBAND_M:
            self.odometer += moved
            self.anchor, self.anchor_t = mean, t

    def _keep(self, mark: _Mark) -> None:
        self.detour.append(mark)
        self.pace.append(mark)
        # Each window keeps the newest fix that still covers it whole, and nothing older.
        while len(self.detour) > 2 and (mark.driven - self.detour[1].driven >= DETOUR_WINDOW_M
                                        or mark.t - self.detour[1].t >= DETOUR_HISTORY):
            self.detour.popleft()
        while len(self.pace) > 2 and mark.clock - self.pace[1].clock >= SPEED_WINDOW:
            self.pace.popleft()

    def _detour(self, now: _Mark) -> float | None:
        """Metres of road per metre of straight line (None: the driver is not closing in)."""
        first = self.detour[0]
        driven = now.driven - first.driven + DETOUR_PRIOR_M
        closed = first.left - now.left + DETOUR_PRIOR_M
        if closed <= 0 or driven > MAX_DETOUR * closed:
            return None
        chord = distance_m(first.point, now.point) + DETOUR_PRIOR_M
        self.twist = max(1.0, driven / chord)
        return self.twist

    def _raw(self, now: _Mark, detour: float) -> float | None:
        """Seconds left at the measured pace (None: too little measured, or standing still)."""
        first = self.pace[0]
        driven, span = now.driven - first.driven, now.clock - first.clock
        if span < MIN_SPAN or driven < MIN_DRIVEN_M:
            return None
        near = min(now.left, DETOUR_WINDOW_M)
        road = near * detour + (now.left - near) * ROAD_DETOUR
        return road / (driven / span)

    def _filter(self, raw: float | None, dt: float, moving: bool, settled: bool) -> None:
        """Blend `raw` into the estimate. Before it has `settled`, the first estimates (from a
        few seconds, maybe after an idle spell) are the least trustworthy, so a lower one is
        taken at once and only the contract's bound on a rise applies."""
        previous = self.seconds
        assert previous is not None
        expected = max(0.0, previous - dt) if moving else previous  # a stop does not bring the target nearer
        if raw is None:
            self.seconds = expected
            return
        surprise = (raw - expected) / max(expected, 60.0)
        share = 1 - math.exp(-dt / SPREAD_TIME)
        self.spread += share * (surprise * surprise - self.spread)
        if not settled:
            self.seconds = min(raw, max(previous, expected) * (1 + MAX_CHANGE))
            return
        blended = expected + (1 - math.exp(-dt / SMOOTHING)) * (raw - expected)
        bound = min(MAX_CHANGE, MAX_CHANGE_PER_S * dt)
        self.seconds = min(max(blended, expected * (1 - bound)), max(previous, expected) * (1 + bound))

    def _confidence(self, now: _Mark, stopped: float) -> tuple[str, float]:
        """How sure the estimate is, in words and as a share of it either way (roughly one
        standard deviation): the raw estimates' disagreement with the filter, plus the share
        of the distance left that lies beyond what the detour window has measured (the road
        there is assumed, not seen), plus how little of that window is filled yet."""
        measured = now.t - self.since
        window = min(1.0, (now.driven - self.detour[0].driven) / DETOUR_WINDOW_M)
        beyond = max(0.0, now.left - DETOUR_WINDOW_M * window) / now.left if now.left > 0 else 0.0
        doubt = BASE_DOUBT + math.sqrt(self.spread) + BEYOND_DOUBT * beyond + TWIST_DOUBT * (self.twist - 1)
        if measured < UNSURE_BEFORE or doubt > LOW_DOUBT or stopped > LONG_STOP:
            return "low", max(doubt, LOW_DOUBT)
        if measured >= SURE_AFTER and doubt < HIGH_DOUBT and not stopped:
            return "high", doubt
        return "medium", doubt


class Journey:
    """One parcel's fixes: their quality, its ETA and the driver's place inside or outside
    the pickup and destination zones."""

    def __init__(self, pickup: dict[str, Any], destination: dict[str, Any], radius_m: float,
                 arriving_within: float = 0.0) -> None:
        self.targets = {zone: (point["lat"], point["lng"]) for zone, point in zip(ZONES, (pickup, destination),
                                                                                  strict=True)}
        self.radius_m = radius_m
        self.inside: dict[str, bool] = {}
        self.last_good: tuple[float, float, float] | None = None  # lat, lng, time
        self.estimator: _Estimator | None = None
        self.last_eta: dict[str, Any] | None = None
        self.arriving_within = arriving_within  # seconds of ETA to the destination that count as arriving
        self.arrived = False  # `arriving` was said once: never again on this journey

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
        self.last_eta = self._eta((lat, lng), distances[target] if target else 0.0, t, target)
        told = tuple(c for c in crossings if c)
        eta = self.last_eta
        arriving = not self.arrived and status == "in_transit" and (
            ("destination", "enter") in told
            or (eta is not None and eta["to"] == "destination" and eta["seconds"] < self.arriving_within))
        self.arrived = self.arrived or arriving
        return Observation(False, eta, told, arriving)

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

    def _eta(self, point: tuple[float, float], left: float, t: float, target: str | None) -> dict[str, Any] | None:
        """`left`: metres from `point` to `target` (None: the parcel heads nowhere we track)."""
        if target is None:
            self.estimator = None
            return None
        if self.estimator is None or self.estimator.target != target:
            self.estimator = _Estimator(target)
        return self.estimator.add(point, t, left)


def target_of(status: str) -> str | None:
    """Where the driver is heading while a parcel is `status` (None: nowhere we track)."""
    if status == "assigned":
        return "pickup"
    return "destination" if status in EN_ROUTE else None
