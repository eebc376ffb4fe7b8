"""The ETA, geofences and fix quality on synthetic routes (docs/protocol.md, "What a
broadcast carries beyond the basics" and "Geofences"). Pure: time is the test's own."""

from __future__ import annotations

import math
import random

import pytest

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


def test_arriving_is_said_once_in_transit_at_the_destinations_zone_however_often_it_is_entered() -> None:
    journey = Journey(PICKUP, DESTINATION, 150, arriving_within=0.0)  # the zone alone says it
    said = [journey.observe(*east_of_destination(m), 1000 + i * 10, "picked_up").arriving
            for i, m in enumerate([400, 140])]
    assert said == [False, False]  # not on its way to the recipient yet
    journey = Journey(PICKUP, DESTINATION, 150, arriving_within=0.0)
    said = [journey.observe(*east_of_destination(m), 1000 + i * 10, "in_transit").arriving
            for i, m in enumerate([400, 300, 140, 230, 140])]
    assert said == [False, False, True, False, False]  # entered twice, said once


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


# -- real-looking drives: a street grid, turns, a light, GPS jitter (issue 17) -------------------
#
# Local metres east (x) and north (y) of ORIGIN; the truck drives `legs` (heading in degrees,
# 0 = east, 90 = north; metres) at 15 m/s, slows to 7 m/s within 40 m of each corner, waits at
# a red light, and reports a fix every 5 s with about 5 m of GPS noise each way. The truth is
# the time it really still needs, light and corners included.
#
# The estimator before issue 17 (closing speed over 90 s) on these drives, seeds 1-5, from
# the first minute to the last: on the grid it changed by up to x2.1-2.2 between two updates
# (up x1.9-2.0: the 25 % cap did not survive its nulls), was null 14 times and within 25 % of
# the truth 63-64 % of the time (worst +1,100 %); on the jog x3.2-3.8, null 7 times, within
# 25 % 54 % (worst +1,700-2,000 %); on the stairs (every leg at 45°) x1.12-1.14, 100 %,
# worst 17 % (there it was better: the new one is worst 22-25 %).

ORIGIN = (52.50, 13.30)
METRES_PER_DEG_LAT = distance_m((52.0, 13.3), (53.0, 13.3))
METRES_PER_DEG_LNG_AT_ORIGIN = distance_m((52.5, 0.0), (52.5, 1.0))
GRID = [(0, 1500), (45, 2000), (90, 800), (0, 2000), (-45, 2500), (-90, 446), (0, 1754)]  # 11 km, 8.4 km straight
JOG = [(0, 2000), (90, 1200), (0, 3000), (-90, 1200), (0, 3600)]  # 11 km: a straight road with a 1.2 km jog
STAIRS = [(0, 600), (90, 600)] * 6 + [(0, 500), (90, 500)]  # 8.2 km of blocks toward a target north-east


def local(x: float, y: float) -> tuple[float, float]:
    return ORIGIN[0] + y / METRES_PER_DEG_LAT, ORIGIN[1] + x / METRES_PER_DEG_LNG_AT_ORIGIN


def along(corners: list[tuple[float, float]], s: float) -> tuple[float, float]:
    for (x1, y1), (x2, y2) in zip(corners, corners[1:], strict=False):
        length = math.hypot(x2 - x1, y2 - y1)
        if s <= length:
            return x1 + s / length * (x2 - x1), y1 + s / length * (y2 - y1)
        s -= length
    return corners[-1]


def city_drive(legs: list[tuple[float, float]], light_at: float, seed: int, wait: float = 40.0,
               every: float = 5.0) -> list[tuple[float, float, dict | None]]:
    """(time, true seconds left, eta) of each fix of one drive of `legs` with a red light
    `light_at` metres in, as Journey.observe answers them."""
    corners, turns, total = [(0.0, 0.0)], [], 0.0
    for heading, length in legs:
        x, y = corners[-1]
        corners.append((x + length * math.cos(math.radians(heading)), y + length * math.sin(math.radians(heading))))
        total += length
        turns.append(total)
    rng, fixes = random.Random(seed), []
    s, t, waited, step = 0.0, 0.0, 0.0, 0.25
    while s < total:
        if t % every < step / 2:
            x, y = along(corners, s)
            fixes.append((t, local(x + rng.gauss(0, 5), y + rng.gauss(0, 5))))
        if light_at <= s < light_at + 1 and waited < wait:
            waited += step
        else:
            s += (7.0 if any(abs(s - turn) < 40 for turn in turns[:-1]) else 15.0) * step
        t += step
    lat, lng = local(*corners[-1])
    journey = Journey(PICKUP, {"lat": lat, "lng": lng}, 150)
    return [(t, t_end - t, journey.observe(*point, 1000 + t, "in_transit").eta)
            for t_end in [t] for t, point in fixes]


def judged(drive: list[tuple[float, float, dict | None]]) -> tuple[float, float, float, int]:
    """From the first minute to the last: the largest factor between two consecutive
    estimates, the share within 25 % of the truth, the worst error, and the nulls."""
    middle = [(truth, eta) for t, truth, eta in drive if t >= 60 and truth >= 60]
    seconds = [eta["seconds"] for _, eta in middle if eta]
    errors = [abs(eta["seconds"] - truth) / truth for truth, eta in middle if eta]
    steps = [max(a / b, b / a) for a, b in zip(seconds, seconds[1:], strict=False)]
    return max(steps), sum(e <= 0.25 for e in errors) / len(errors), max(errors), len(middle) - len(seconds)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_the_grid_drive_with_a_light_moves_at_most_8_percent_an_update_and_is_within_a_quarter_70_percent_of_the_time(
        seed: int) -> None:
    # Achieved on seeds 1-5: steps of at most x1.075, within 25 % of the truth 70-88 % of the
    # updates (worst 32-40 %: the first leg runs straight at the target and says nothing of the
    # turns to come), never null. Those misses are the straight line's, and the range says so.
    drive = city_drive(GRID, light_at=4300, seed=seed)
    step, within, worst, nulls = judged(drive)
    assert step <= 1.08 and within >= 0.70 and worst <= 0.41 and nulls == 0, (step, within, worst, nulls)
    ranges = [eta["range"][0] <= truth <= eta["range"][1] for t, truth, eta in drive if t >= 60 and truth >= 60]
    assert sum(ranges) / len(ranges) >= 0.85  # the range holds the truth 86-94 % of the time
    assert drive[1][2]["confidence"] == "low"  # it starts unsure, and says so


@pytest.mark.parametrize("legs, light_at, min_within, max_worst", [
    (JOG, 2000, 0.73, 0.54),  # achieved 73-74 %, worst 52-54 % (a 1.2 km jog back nobody could see coming)
    (STAIRS, 3000, 1.0, 0.25),  # achieved 100 %, worst 22-23 %
])
def test_other_city_drives_move_at_most_8_percent_an_update(legs, light_at, min_within, max_worst) -> None:
    for seed in (1, 2, 3):
        step, within, worst, nulls = judged(city_drive(legs, light_at, seed))
        assert step <= 1.085 and within >= min_within and worst <= max_worst and nulls == 0, (step, within, worst)


def test_a_long_straight_drive_becomes_sure_and_its_range_holds_the_truth() -> None:
    journey, speed, start = Journey(PICKUP, DESTINATION, 150), 12.0, 3500.0
    seen = []
    for i in range(50):
        remaining = start - speed * i * 5
        eta = journey.observe(*east_of_destination(remaining), 1000 + i * 5, "in_transit").eta
        seen.append((remaining / speed, eta))
    assert [eta["confidence"] for _, eta in seen[1:9]] == ["low"] * 8  # under 45 s measured
    assert seen[30][1]["confidence"] == "high"
    for truth, eta in seen[1:]:
        assert eta["range"][0] <= truth <= eta["range"][1]
        assert abs(eta["seconds"] - truth) <= 1


def test_fixes_ten_a_second_with_jitter_give_a_steady_estimate() -> None:
    rng = random.Random(3)
    journey, speed, start = Journey(PICKUP, DESTINATION, 150), 15.0, 3000.0
    etas = []
    for i in range(600):  # a minute
        t = i / 10
        remaining = start - speed * t
        lat, lng = east_of_destination(remaining + rng.gauss(0, 4))
        etas.append((remaining / speed, journey.observe(lat + rng.gauss(0, 4e-5), lng, 1000 + t, "in_transit").eta))
    errors = [abs(eta["seconds"] - truth) / truth for truth, eta in etas[50:]]
    assert max(errors) < 0.1, max(errors)  # the odometer ignores jitter under 15 m


def test_a_long_stop_holds_the_estimate_unsure_then_gives_up() -> None:
    journey, speed = Journey(PICKUP, DESTINATION, 150), 10.0
    remaining, t = 5000.0, 1000.0
    for _ in range(30):
        t, remaining = t + 5, remaining - speed * 5
        before = journey.observe(*east_of_destination(remaining), t, "in_transit").eta
    stop = []
    for _ in range(70):  # 350 s parked
        t += 5
        stop.append(journey.observe(*east_of_destination(remaining), t, "in_transit").eta)
    held = [eta for eta in stop if eta]
    assert len(held) == 60  # 300 s, then nothing: when the driver will go on is anybody's guess
    # It stops counting down once the stop is one (10 s), and rises by at most the share of the
    # pace window the first minute of it takes (a longer stop is not the traffic): 353 s -> 434 s.
    assert all(before["seconds"] - 10 <= eta["seconds"] <= before["seconds"] * 1.25 for eta in held)
    assert held[-1]["seconds"] == held[-10]["seconds"]
    assert held[-1]["confidence"] == "low"
    for _ in range(3):  # driving on: an estimate again
        t, remaining = t + 5, remaining - speed * 5
        eta = journey.observe(*east_of_destination(remaining), t, "in_transit").eta
    assert eta is not None and eta["confidence"] == "low"
