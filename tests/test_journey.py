"""The ETA, geofences and fix quality on synthetic routes (docs/protocol.md, "What a
broadcast carries beyond the basics" and "Geofences"). Pure: time is the test's own."""

from __future__ import annotations

import math
import random

from realtime.journey import Journey, distance_m

PICKUP = {"lat": 52.5200, "lng": 13.4050}
DESTINATION = {"lat": 52.5200, "lng": 13.4050 + 0.15}  # about 10 km east
METRES_PER_DEG_LNG = distance_m((52.52, 0.0), (52.52, 1.0))


def east_of_destination(metres: float) -> tuple[float, float]:
    """A point `metres` west of the destination, on the straight road toward it."""
    return DESTINATION["lat"], DESTINATION["lng"] - metres / METRES_PER_DEG_LNG


def drive(journey: Journey, route: list[tuple[float, float, float]], status: str = "in_transit") -> list:
    return [journey.observe(lat, lng, t, status) for lat, lng, t in route]


def test_a_steady_straight_drive_is_within_a_quarter_after_ten_updates_and_never_jumps_up() -> None:
    journey, speed, start = Journey(PICKUP, DESTINATION, 150), 12.0, 6000.0
    seen = []
    for i in range(40):
        t = i * 5.0
        remaining = start - speed * t
        eta = journey.observe(*east_of_destination(remaining), 1000 + t, "in_transit").eta
        seen.append((remaining / speed, eta))
    for truth, eta in seen[10:]:
        assert eta is not None and eta["to"] == "destination"
        assert abs(eta["seconds"] - truth) <= 0.25 * truth
    etas = [eta["seconds"] for _, eta in seen if eta]
    assert all(b <= a * 1.25 + 1 for a, b in zip(etas, etas[1:], strict=False))


def test_gps_jitter_averages_out() -> None:
    rng = random.Random(7)
    journey, speed, start = Journey(PICKUP, DESTINATION, 150), 10.0, 5000.0
    errors = []
    for i in range(60):
        t = i * 2.0
        remaining = start - speed * t + rng.gauss(0, 8)  # about 8 m of GPS noise
        lat, lng = east_of_destination(remaining)
        eta = journey.observe(lat + rng.gauss(0, 5e-5), lng, 1000 + t, "in_transit").eta
        if i >= 20:
            truth = (start - speed * t) / speed
            assert eta is not None
            errors.append(abs(eta["seconds"] - truth) / truth)
    assert max(errors) < 0.25, max(errors)


def test_a_red_light_raises_the_estimate_gradually_and_driving_on_brings_it_back() -> None:
    journey, speed = Journey(PICKUP, DESTINATION, 150), 10.0
    remaining, t, etas = 4000.0, 0.0, []
    for phase_speed, seconds in ((speed, 100), (0.0, 40), (speed, 100)):
        for _ in range(int(seconds / 5)):
            t += 5
            remaining -= phase_speed * 5
            etas.append(journey.observe(*east_of_destination(remaining), 1000 + t, "in_transit").eta)
    values = [e["seconds"] for e in etas if e]
    assert len(values) == len(etas) - 1  # only the first fix has no estimate; the stop keeps one
    assert all(b <= a * 1.25 + 1 for a, b in zip(values, values[1:], strict=False))
    assert abs(values[-1] - remaining / speed) <= 0.25 * remaining / speed


def test_a_detour_away_from_the_destination_gives_no_estimate_rather_than_nonsense() -> None:
    journey = Journey(PICKUP, DESTINATION, 150)
    remaining, t = 3000.0, 0.0
    for _ in range(10):
        t, remaining = t + 5, remaining - 50
        journey.observe(*east_of_destination(remaining), 1000 + t, "in_transit")
    etas = []
    for _ in range(30):  # drives away for 150 s
        t, remaining = t + 5, remaining + 50
        etas.append(journey.observe(*east_of_destination(remaining), 1000 + t, "in_transit").eta)
    assert etas[-1] is None
    assert all(e is None or e["seconds"] > 0 for e in etas)


def test_the_eta_is_to_the_pickup_while_assigned_and_unknown_when_finished() -> None:
    journey = Journey(PICKUP, DESTINATION, 150)
    for i in range(5):
        eta = journey.observe(PICKUP["lat"] + 0.01 - i * 0.001, PICKUP["lng"], 1000 + i * 5, "assigned").eta
    assert eta["to"] == "pickup" and eta["distance_m"] == round(distance_m((PICKUP["lat"] + 0.006, PICKUP["lng"]),
                                                                          (PICKUP["lat"], PICKUP["lng"])))
    assert journey.observe(PICKUP["lat"], PICKUP["lng"], 1030, "delivered").eta is None
    assert journey.observe(PICKUP["lat"], PICKUP["lng"], 1035, "pending").eta is None


def test_geofences_fire_once_per_crossing_and_ignore_jitter_at_the_edge() -> None:
    journey, events = Journey(PICKUP, DESTINATION, 150), []
    for i, metres in enumerate([400, 300, 200, 149, 160, 140, 170, 155, 200, 226, 230, 140]):
        events += journey.observe(*east_of_destination(metres), 1000 + i * 10, "in_transit").crossings
    assert events == [("destination", "enter"), ("destination", "exit"), ("destination", "enter")]


def test_inaccurate_fixes_and_impossible_jumps_are_low_quality_and_move_nothing() -> None:
    journey = Journey(PICKUP, DESTINATION, 150)
    journey.observe(*east_of_destination(2000), 1000, "in_transit")
    before = journey.observe(*east_of_destination(1950), 1005, "in_transit").eta
    assert before is not None and before["distance_m"] == 1950
    vague = journey.observe(*east_of_destination(100), 1010, "in_transit", accuracy=250)
    assert vague.low_quality and vague.crossings == () and vague.eta == before
    jump = journey.observe(*east_of_destination(100), 1011, "in_transit")  # 1,850 m in 6 s
    assert jump.low_quality and jump.crossings == ()
    assert jump.eta == before  # the estimate stays where the last good fix left it
    fine = journey.observe(*east_of_destination(1900), 1015, "in_transit", accuracy=20)
    assert not fine.low_quality
    assert math.isclose(fine.eta["distance_m"], 1900, abs_tol=2)


def test_a_weak_fix_after_a_status_change_never_names_the_old_target() -> None:
    journey = Journey(PICKUP, DESTINATION, 150)
    for i in range(5):
        eta = journey.observe(PICKUP["lat"] + 0.01 - i * 0.001, PICKUP["lng"], 1000 + i * 5, "assigned").eta
    assert eta["to"] == "pickup"
    near = (PICKUP["lat"] + 0.005, PICKUP["lng"])
    assert journey.observe(*near, 1026, "assigned", accuracy=500).eta == eta  # same status: the estimate stands
    assert journey.observe(*near, 1027, "picked_up", accuracy=500).eta is None  # not yet measured to the destination
    assert journey.observe(*near, 1028, "delivered", accuracy=500).eta is None
    for i in range(3):  # good fixes closing on the destination give an estimate to it
        eta = journey.observe(*east_of_destination(3000 - 50 * i), 2000 + 5 * i, "in_transit").eta
    assert eta is not None and eta["to"] == "destination"
    assert journey.observe(*east_of_destination(2800), 2016, "in_transit", accuracy=500).eta == eta
