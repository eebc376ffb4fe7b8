"""The driver's day in a real browser (CONTRACT §8): one "Start my shift" for every active
parcel over /ws/driver/, the route list kept live, "weak GPS", and the offline queue
(IndexedDB → one location_batch on reconnect) seen through the client's history."""

from __future__ import annotations

import re
import time

from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import (
    AFTER_WEAK,
    NEXT,
    PASSWORD,
    WEAK,
    at,
    pill,
    record_latitudes,
    screenshot,
    start_shift,
    truck,
)

OFFLINE_FIXES = [  # each accuracy its own, so the page shows which fix it has (#accuracy)
    {"latitude": 28.602, "longitude": 77.202, "accuracy": 9},
    {"latitude": 28.603, "longitude": 77.203, "accuracy": 10},
    {"latitude": 28.604, "longitude": 77.204, "accuracy": 11},
]
SEND_EVERY_S = 5  # the /driver page's period (handlers/pages.py); only used here to bound waits


def shift_button(page: Page):
    return page.locator("#shift-toggle")


def waiting(page: Page) -> int:
    """How many fixes the page says wait (0 when the line is hidden)."""
    box = page.locator("#queue-count")
    if not box.is_visible():
        return 0
    found = re.match(r"^(\d+) positions? waiting to be sent$", box.inner_text())
    assert found, box.inner_text()
    return int(found.group(1))


def queue_offline(page: Page, context: BrowserContext, fix: dict) -> None:
    """Move the offline driver to `fix` and wait until the queue holds it. The page shows the
    new fix first (#accuracy); a period that began just before may still be queueing the
    fix from before, so the queue is watched for two more fixes: the second is the new one."""
    context.set_geolocation(fix)
    expect(page.locator("#accuracy")).to_have_text(f"±{fix['accuracy']} m")
    before = waiting(page)
    expect(page.locator("#queue-count")).to_have_text(
        re.compile(rf"^{before + 2} positions waiting to be sent$"), timeout=2 * SEND_EVERY_S * 1000 + 3_000)


def open_track(sessions, email: str, parcel_id: int):
    session = sessions(email)
    session.page.goto(f"/parcels/{parcel_id}/track")
    expect(pill(session.page)).to_have_text("Live")
    return session


def history(server, token: str, parcel_id: int, holding=(), timeout: float = 10) -> list[dict]:
    """The parcel's stored history through the API, once it holds every (lat, lng) of `holding`
    (samples are written on a short timer)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = server.api("GET", f"/api/parcels/{parcel_id}/locations/", token)
        assert status == 200, body
        stored = {(loc["lat"], loc["lng"]) for loc in body["locations"]}
        if all(point in stored for point in holding) or time.monotonic() > deadline:
            return body["locations"]
        time.sleep(0.2)


def test_one_shift_moves_every_parcels_map(sessions, data, server):
    driver_user = data.user("driver", "Meera Multi")
    clients = [data.user("client", f"Client {n}") for n in range(3)]
    statuses = ["assigned", "picked_up", "in_transit"]
    parcel_ids = [data.parcel(c, driver_user, status=s) for c, s in zip(clients, statuses, strict=True)]
    maps = [open_track(sessions, c["email"], p) for c, p in zip(clients, parcel_ids, strict=True)]

    driver = start_shift(sessions, driver_user["email"])
    page = driver.page
    route = page.locator("#route > li")
    expect(route).to_have_count(3)
    assert [int(i) for i in route.evaluate_all("els => els.map(e => e.dataset.parcelId)")] == parcel_ids  # route order
    expect(page.locator("#sharing-for")).to_have_text("3 parcels")
    # Each stop offers its next step, and only that one.
    first = page.locator(f"#parcel-{parcel_ids[0]}")
    expect(first.get_by_role("button", name=re.compile("^Picked up"))).to_be_enabled()
    expect(first.get_by_role("button", name=re.compile("^In transit"))).to_have_count(0)
    expect(first.locator(".button-step:visible")).to_have_count(1)
    last = page.locator(f"#parcel-{parcel_ids[2]}")
    expect(last.get_by_role("button", name=re.compile("^Delivered"))).to_be_enabled()

    # The shift was started once, and all three customers' maps move.
    for session in maps:
        expect(truck(session.page)).to_have_attribute("data-lat", "28.6", timeout=13_000)
        expect(truck(session.page)).to_have_attribute("data-lng", "77.2")
    driver.context.set_geolocation(NEXT)
    for session in maps:
        expect(truck(session.page)).to_have_attribute("data-lat", "28.601", timeout=13_000)
        expect(truck(session.page)).to_have_attribute("data-lng", "77.201")
    expect(page.locator("#last-sent")).not_to_have_text("Not yet")
    expect(page.locator("#accuracy")).to_have_text("±8 m")
    # The screen: kept on, or the driver is told to keep it on.
    expect(page.locator("#wake-state")).to_have_text(re.compile("Kept on|May turn off"))
    if page.locator("#wake-state").inner_text() != "Kept on during your shift":
        expect(page.locator("#wake-note")).to_have_text("Keep this screen on: this browser cannot keep it awake.")

    # A status change made elsewhere (the dispatcher's API) reaches the list without a reload.
    data.call("POST", f"/api/parcels/{parcel_ids[0]}/status/", {"status": "picked_up"})
    expect(first.locator(".status")).to_have_text("Picked up")
    expect(first.get_by_role("button", name=re.compile("^In transit"))).to_be_enabled()
    # The driver's own button: the parcel goes on; delivered (once confirmed), it leaves the list.
    last.get_by_role("button", name=re.compile("^Delivered")).click()
    page.get_by_role("dialog").get_by_role("button", name="Yes, delivered").click()
    expect(route).to_have_count(2)
    expect(page.locator("#finished")).to_contain_text(f"Parcel #{parcel_ids[2]}")
    expect(page.locator("#sharing-for")).to_have_text("2 parcels")
    expect(maps[2].page.locator("#parcel-status")).to_have_text("Delivered")

    # A parcel assigned during the shift appears, and is shared with at once.
    late_client = data.user("client", "Late Client")
    late = data.parcel(late_client, driver_user, status="assigned")
    late_map = open_track(sessions, late_client["email"], late)
    expect(page.locator(f"#parcel-{late}")).to_be_visible()
    expect(page.locator(f"#parcel-{late}").get_by_role("button", name=re.compile("^Picked up"))).to_be_enabled()
    expect(page.locator("#sharing-for")).to_have_text("3 parcels")
    expect(truck(late_map.page)).to_have_attribute("data-lat", "28.601", timeout=13_000)

    page.evaluate("() => window.scrollTo(0, 0)")
    screenshot(page, "driver-shift-phone.png")

    # A weak fix: the driver is told; the customers' trucks stay where they were. Every
    # position a truck lands on is recorded, until it lands on the good fix sent after the
    # weak one (a socket keeps its order, so the weak fix reached the page first).
    drawn = [record_latitudes(truck(session.page)) for session in maps[:2]]
    expect(page.locator("#weak-gps")).to_be_hidden()
    driver.context.set_geolocation(WEAK)
    expect(page.locator("#weak-gps")).to_be_visible(timeout=8_000)
    expect(page.locator("#weak-gps")).to_have_text(re.compile("GPS", re.I))
    driver.context.set_geolocation(AFTER_WEAK)
    expect(page.locator("#weak-gps")).to_be_hidden(timeout=8_000)
    for session, drawn_at in zip(maps[:2], drawn, strict=True):
        expect(truck(session.page)).to_have_attribute("data-lat", str(AFTER_WEAK["latitude"]), timeout=13_000)
        assert str(WEAK["latitude"]) not in drawn_at()  # received, but not followed

    shift_button(page).click()
    expect(shift_button(page)).to_have_text("Start my shift")
    expect(pill(page)).to_have_text("Offline")
    for session in [*maps, late_map, driver]:
        assert session.script_errors() == []


def test_fixes_taken_offline_reach_the_history_in_order(sessions, data, server):
    driver_user = data.user("driver", "Tunnel Tara")
    client = data.user("client", "Patient Client")
    parcel_id = data.parcel(client, driver_user, status="in_transit")
    client_map = open_track(sessions, client["email"], parcel_id)
    driver = start_shift(sessions, driver_user["email"])
    page = driver.page
    expect(truck(client_map.page)).to_have_attribute("data-lat", "28.6", timeout=13_000)
    expect(page.locator("#queue-count")).to_be_hidden()

    driver.context.set_offline(True)
    went_offline = time.time()
    for fix in OFFLINE_FIXES:
        queue_offline(page, driver.context, fix)
    assert waiting(page) >= 2 * len(OFFLINE_FIXES)
    # Nothing of it reached the customer meanwhile.
    expect(truck(client_map.page)).to_have_attribute("data-lat", "28.6")
    came_back = time.time()
    driver.context.set_offline(False)

    expect(page.locator("#queue-count")).to_be_hidden(timeout=20_000)
    expect(pill(page)).to_have_text("Live")
    expect(page.locator("#toasts")).to_contain_text("kept while offline")
    last = OFFLINE_FIXES[-1]
    expect(truck(client_map.page)).to_have_attribute("data-lat", str(last["latitude"]), timeout=13_000)

    token = server.token(client["email"], PASSWORD)
    wanted = [(f["latitude"], f["longitude"]) for f in OFFLINE_FIXES]
    stored = history(server, token, parcel_id, wanted)
    found = [i for i, loc in enumerate(stored) if (loc["lat"], loc["lng"]) in wanted]
    taken = [(stored[i]["lat"], stored[i]["lng"]) for i in found]
    assert [p for n, p in enumerate(taken) if n == 0 or taken[n - 1] != p] == wanted, stored  # in the order taken
    times = [at(stored[i]["timestamp"]) for i in found]
    # Stored with the time each fix was taken (while offline), not the time the batch came.
    assert all(went_offline - 1 <= t <= came_back + 1 for t in times), (went_offline, came_back, times)
    assert times[-1] - times[0] >= 2 * SEND_EVERY_S - 1
    assert driver.script_errors() == [] and client_map.script_errors() == []


def test_waiting_fixes_survive_a_reload(sessions, data, server):
    driver_user = data.user("driver", "Reload Ravi")
    client = data.user("client", "Reload Client")
    parcel_id = data.parcel(client, driver_user, status="picked_up")
    driver = start_shift(sessions, driver_user["email"])
    page = driver.page
    driver.context.set_offline(True)
    queue_offline(page, driver.context, OFFLINE_FIXES[0])
    shift_button(page).click()  # the shift ends while offline: the fixes stay in IndexedDB
    kept = waiting(page)
    assert kept >= 1
    driver.context.set_offline(False)
    page.reload()
    expect(page.locator("#queue-count")).to_have_text(
        re.compile(rf"^{kept} positions? waiting to be sent$"))
    shift_button(page).click()
    expect(pill(page)).to_have_text("Live")
    expect(page.locator("#queue-count")).to_be_hidden(timeout=10_000)
    token = server.token(client["email"], PASSWORD)
    kept_fix = (OFFLINE_FIXES[0]["latitude"], OFFLINE_FIXES[0]["longitude"])
    stored = history(server, token, parcel_id, [kept_fix])
    assert kept_fix in [(loc["lat"], loc["lng"]) for loc in stored], stored
    assert driver.script_errors() == []


def test_a_denied_location_ends_the_shift_with_a_reason(sessions, data):
    driver_user = data.user("driver", "No Gps")
    data.parcel(data.user("client", "Someone"), driver_user, status="assigned")
    driver = sessions(driver_user["email"], phone=True)  # no geolocation permission granted
    page = driver.page
    page.goto("/driver")
    shift_button(page).click()
    expect(page.locator("#geo-message")).to_contain_text("Location permission is denied")
    expect(shift_button(page)).to_have_text("Start my shift")
    assert driver.script_errors() == []
