"""Every truck on one map, in a real browser (CONTRACT §8): the dispatcher's live board on
/dispatch over /ws/dispatch/, and a client's active parcels together on /parcels."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from playwright.sync_api import expect

from models.db import iso
from tests.browser.conftest import AFTER_WEAK, NEXT, WEAK, pill, record_latitudes, screenshot, start_shift
from tests.conftest import path_to

QUIET = {"lat": 28.55, "lng": 77.25}

# A driver's own /ws/driver/ socket, from their logged-in page: one location_batch, then the echo.
SEND_BATCH = """
async ({ locations }) => {
  const { access } = await (await fetch("/api/token/ws/")).json();
  const ws = new WebSocket(`ws://${location.host}/ws/driver/?token=${access}`);
  return await new Promise((resolve) => {
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "subscribed") ws.send(JSON.stringify({ type: "location_batch", locations }));
      else if (message.type === "error" || message.type === "location_update") { ws.close(); resolve(message); }
    };
  });
}
"""


def report_once(sessions, driver_email: str, point: dict, seconds_ago: float) -> None:
    """The driver's phone sends one fix taken `seconds_ago` (an offline batch), then goes quiet."""
    session = sessions(driver_email)
    sent = session.page.evaluate(SEND_BATCH, {"locations": [
        {**point, "address": "", "recorded_at": iso(datetime.now(UTC) - timedelta(seconds=seconds_ago))}]})
    assert sent["type"] == "location_update", sent


def stored_position(data, parcel_id: int) -> dict:
    """The parcel's last_location once the sample writer has stored it."""
    deadline = time.monotonic() + 10
    while not (parcel := data.call("GET", f"/api/parcels/{parcel_id}/"))["last_location"]:
        assert time.monotonic() < deadline, parcel
        time.sleep(0.2)
    return parcel["last_location"]


def two_trucks(sessions, data, names: tuple[str, str, str], quiet_status: str, seconds_ago: float):
    """A client (`names`: the client, then two drivers) with a parcel in transit with the first driver
    and one `quiet_status` with the second, whose phone reported QUIET once `seconds_ago`.
    Returns the client, both drivers and both parcels' ids."""
    client_name, moving_name, quiet_name = names
    client = data.user("client", client_name)
    mover = data.user("driver", moving_name)
    quiet = data.user("driver", quiet_name)
    moving_parcel = data.parcel(client, mover, status="in_transit")
    quiet_parcel = data.parcel(client, quiet, status=quiet_status)
    report_once(sessions, quiet["email"], QUIET, seconds_ago=seconds_ago)
    return client, mover, quiet, moving_parcel, quiet_parcel


def inside(page, box_selector: str, locator) -> bool:
    """Whether every element of `locator` is drawn wholly inside the element `box_selector`."""
    box = page.locator(box_selector).bounding_box()
    for i in range(locator.count()):
        pin = locator.nth(i).bounding_box()
        if pin is None or pin["x"] < box["x"] or pin["y"] < box["y"]:
            return False
        if pin["x"] + pin["width"] > box["x"] + box["width"] or pin["y"] + pin["height"] > box["y"] + box["height"]:
            return False
    return True


def test_dispatchers_map_moves_the_trucks_and_flags_a_quiet_one(sessions, data):
    client, mover, quiet, moving_parcel, quiet_parcel = two_trucks(
        sessions, data, ("Board Client", "Arjun Mover", "Bela Quiet"), "picked_up",
        seconds_ago=50)  # 10 s short of the board's 60

    board = sessions(data.user("dispatcher", "Dora Board")["email"])
    page = board.page
    page.clock.install()
    page.goto("/dispatch")
    expect(pill(page)).to_have_text("Live")
    expect(page.locator(f"#parcel-{moving_parcel}")).to_contain_text("Arjun Mover")  # the paged table is still there

    quiet_truck = page.locator(f'.marker-driver[data-driver-id="{quiet["id"]}"]')
    expect(quiet_truck).to_have_attribute("data-lat", str(QUIET["lat"]))
    expect(quiet_truck).to_have_attribute("data-parcels", str(quiet_parcel))
    expect(quiet_truck).to_have_attribute("data-stale", "false")
    expect(page.locator(".leaflet-tooltip", has_text=f"Bela Quiet · #{quiet_parcel}")).to_be_visible()

    driver = start_shift(sessions, mover["email"])
    moving_truck = page.locator(f'.marker-driver[data-driver-id="{mover["id"]}"]')
    expect(moving_truck).to_have_attribute("data-lat", "28.6", timeout=8_000)
    expect(moving_truck).to_have_attribute("data-lng", "77.2")
    driver.context.set_geolocation(NEXT)
    expect(moving_truck).to_have_attribute("data-lat", "28.601", timeout=8_000)
    expect(moving_truck).to_have_attribute("data-lng", "77.201")
    expect(moving_truck).to_have_count(1)  # moved, not added again

    # A weak fix reaches the board but does not move the truck across town: recorded until
    # the good fix after it (over a second later, so not conflated away) is drawn.
    drawn_at = record_latitudes(moving_truck)
    driver.context.set_geolocation(WEAK)
    expect(driver.page.locator("#weak-gps")).to_be_visible(timeout=8_000)
    driver.context.set_geolocation(AFTER_WEAK)
    expect(moving_truck).to_have_attribute("data-lat", str(AFTER_WEAK["latitude"]), timeout=10_000)
    assert str(WEAK["latitude"]) not in drawn_at()

    # 15 s later by the page's clock, the quiet truck has not reported for over a minute.
    page.clock.fast_forward("00:15")
    expect(quiet_truck).to_have_attribute("data-stale", "true")
    expect(quiet_truck).to_have_class(re.compile(r"\bis-stale\b"))
    quiet_item = page.locator(f'.truck-item[data-driver-id="{quiet["id"]}"]')
    expect(quiet_item).to_have_class(re.compile(r"\bis-stale\b"))
    expect(quiet_item).to_contain_text("No report for 1 min")
    expect(page.locator(".leaflet-tooltip.is-stale")).to_contain_text("no report for 1 min")
    expect(moving_truck).to_have_attribute("data-stale", "false")
    mover_item = page.locator(f'.truck-item[data-driver-id="{mover["id"]}"]')
    expect(mover_item).to_contain_text(re.compile(r"Reported \d+ s ago"))
    expect(page.locator("#truck-list > li").first).to_have_attribute("data-driver-id", str(quiet["id"]))  # quiet first
    screenshot(page, "dispatch-live-map-desktop.png")

    # A new assignment joins the driver's truck; a finished parcel leaves the map.
    added = data.parcel(client, quiet, status="assigned")
    expect(quiet_truck).to_have_attribute("data-parcels", f"{quiet_parcel} {added}")
    data.call("POST", f"/api/parcels/{moving_parcel}/status/", {"status": "delivered"})
    expect(moving_truck).to_have_count(0)
    expect(mover_item).to_have_count(0)
    assert board.script_errors() == [] and driver.script_errors() == []


def test_clients_parcels_map_shows_each_truck(sessions, data):
    client, first_driver, _, driven, waiting = two_trucks(
        sessions, data, ("Many Parcels", "Kabir First", "Lata Second"), "assigned", seconds_ago=5)
    assert stored_position(data, waiting)["lat"] == QUIET["lat"]
    pending = data.parcel(client, status="pending")  # no driver: no truck

    session = sessions(client["email"])
    page = session.page
    page.goto("/parcels")
    expect(page.locator("#parcels-map-card")).to_be_visible()
    expect(pill(page)).to_have_text("Live")
    trucks = page.locator("#parcels-map .marker-driver")
    second = page.locator(f'.marker-driver[data-parcel-id="{waiting}"]')
    expect(second).to_have_attribute("data-lat", str(QUIET["lat"]))  # its last known position, from the start
    expect(trucks).to_have_count(1)
    expect(page.locator("#parcels-map-note")).to_contain_text(f"No position yet for #{driven}, #{pending}.")

    driver = start_shift(sessions, first_driver["email"])
    first = page.locator(f'.marker-driver[data-parcel-id="{driven}"]')
    expect(first).to_have_attribute("data-lat", "28.6", timeout=8_000)
    expect(trucks).to_have_count(2)
    driver.context.set_geolocation(NEXT)
    expect(first).to_have_attribute("data-lat", "28.601", timeout=8_000)
    screenshot(page, "client-parcels-map-desktop.png")
    drawn_at = record_latitudes(first)
    driver.context.set_geolocation(WEAK)
    expect(driver.page.locator("#weak-gps")).to_be_visible(timeout=8_000)
    driver.context.set_geolocation(AFTER_WEAK)
    expect(first).to_have_attribute("data-lat", str(AFTER_WEAK["latitude"]), timeout=10_000)
    assert str(WEAK["latitude"]) not in drawn_at()  # a weak fix is not followed

    data.call("POST", f"/api/parcels/{waiting}/status/", {"status": "cancelled"})
    expect(second).to_have_count(0)
    expect(page.locator("#toasts")).to_contain_text(f"Parcel #{waiting}: Cancelled")
    first.click()
    expect(page).to_have_url(re.compile(rf"/parcels/{driven}/track$"))
    assert session.script_errors() == [] and driver.script_errors() == []


def test_dispatchers_map_shows_a_trucks_pickup_and_destination_and_frames_them(sessions, data):
    """Issue 17: one truck on the board is framed with its parcel's pickup and destination
    pins (from the board message), not zoomed onto alone."""
    for earlier in data.call("GET", "/api/parcels/?active=1&limit=500"):  # the module's other tests' parcels
        ending = path_to("cancelled" if earlier["status"] in ("pending", "assigned") else "delivered")
        for step in ending[ending.index(earlier["status"]) + 1:] if earlier["status"] in ending else ending:
            data.call("POST", f"/api/parcels/{earlier['id']}/status/", {"status": step})
    client, driver = data.user("client", "Pinned Client"), data.user("driver", "Pia Pinned")
    parcel = data.parcel(client, driver, status="in_transit", pickup="India Gate, New Delhi",
                         destination="Hauz Khas, New Delhi")
    report_once(sessions, driver["email"], QUIET, seconds_ago=5)

    page = sessions(data.user("dispatcher", "Dev Pins")["email"]).page
    page.goto("/dispatch")
    expect(pill(page)).to_have_text("Live")
    expect(page.locator("#board-summary")).to_have_text("1 truck · 1 active parcel")
    truck = page.locator(".marker-driver")
    expect(truck).to_have_count(1)
    expect(truck).to_have_attribute("data-lat", str(QUIET["lat"]))
    pickup = page.locator(f'#board-map .marker-pickup[data-parcel-id="{parcel}"]')
    destination = page.locator(f'#board-map .marker-destination[data-parcel-id="{parcel}"]')
    expect(pickup).to_have_attribute("title", f"Pickup of #{parcel} · India Gate, New Delhi")
    expect(destination).to_have_attribute("title", f"Destination of #{parcel} · Hauz Khas, New Delhi")
    # Framed over the truck and both pins (synchronously, with them): all three wholly inside the map.
    for marker in (truck, pickup, destination):
        assert inside(page, "#board-map", marker)
    assert page.locator("#board-map .leaflet-marker-icon").count() == 3
    screenshot(page, "dispatch-live-map-one-truck.png")
