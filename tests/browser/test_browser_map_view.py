"""The client's live map keeps the view the person chose; "Follow driver" re-centres it on the truck.

Issue 3: "the map frames pickup, destination and driver once and then keeps the view the person chose
(a 'follow driver' toggle re-centres on each update)". The view is read two ways: the center and zoom
track.js writes on #map at every moveend (data-center-lat, data-center-lng, data-zoom), read only once
no pan or zoom animation is running; and where the markers are drawn on screen, relative to the middle
of the map, which is what the person sees (and is current even in the middle of an animation).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import truck

# Steps a truck can drive between two sends (about 150 m in 5 s): a longer jump is a
# low-quality fix the map does not move to (docs/protocol.md, "What a broadcast carries").
P1 = {"latitude": 28.6, "longitude": 77.21, "accuracy": 8}
P2 = {"latitude": 28.599, "longitude": 77.211, "accuracy": 8}
P3 = {"latitude": 28.598, "longitude": 77.21, "accuracy": 8}
P4 = {"latitude": 28.597, "longitude": 77.211, "accuracy": 8}
ARRIVAL_MS = 14_000  # the driver's page sends its latest fix every 5 s; the truck then glides over the interval
PIXEL = 1.5  # how far apart (in screen pixels) two drawings of "the same place" may be

# The view of #map once it has settled (no pan or zoom animation running), and, with a `previous`
# view, only once it differs from that one; false (keep waiting) otherwise.
SETTLED_VIEW = """(previous) => {
  const map = document.getElementById("map");
  const pane = map.querySelector(".leaflet-map-pane");
  if (!map.dataset.zoom || /leaflet-(pan|zoom)-anim/.test(pane.className)) return false;
  const view = { lat: Number(map.dataset.centerLat), lng: Number(map.dataset.centerLng),
                 zoom: Number(map.dataset.zoom) };
  if (previous && view.lat === previous.lat && view.lng === previous.lng && view.zoom === previous.zoom) return false;
  return view;
}"""

# The settled view once its center is within 2 screen pixels (at its zoom) of [lat, lng]; false otherwise.
CENTRED_ON = """([lat, lng]) => {
  const map = document.getElementById("map");
  const pane = map.querySelector(".leaflet-map-pane");
  if (!map.dataset.zoom || /leaflet-(pan|zoom)-anim/.test(pane.className)) return false;
  const zoom = Number(map.dataset.zoom);
  const tolerance = 2 * 360 / (256 * 2 ** zoom);  // degrees of longitude in 2 px (latitude: fewer)
  const near = Math.abs(Number(map.dataset.centerLat) - lat) <= tolerance
    && Math.abs(Number(map.dataset.centerLng) - lng) <= tolerance;
  return near && { lat: Number(map.dataset.centerLat), lng: Number(map.dataset.centerLng), zoom };
}"""


@pytest.fixture
def people(data):
    """Fresh people (and parcel) for each test: no test sees what another left behind."""
    return {"client": data.user("client", "Vimala Viewer"), "driver": data.user("driver", "Farid Follow")}


def settled_view(page: Page, changed_from: dict[str, float] | None = None) -> dict[str, float]:
    return page.wait_for_function(SETTLED_VIEW, arg=changed_from, timeout=8_000).json_value()


def centred_on(page: Page, position: dict[str, float]) -> dict[str, float]:
    where = [position["latitude"], position["longitude"]]
    return page.wait_for_function(CENTRED_ON, arg=where, timeout=ARRIVAL_MS).json_value()


def from_middle(page: Page, thing: Locator) -> tuple[float, float]:
    """Where `thing` is drawn, in screen pixels from the middle of the map."""
    box, map_box = thing.bounding_box(), page.locator("#map").bounding_box()
    assert box and map_box
    return (box["x"] + box["width"] / 2 - map_box["x"] - map_box["width"] / 2,
            box["y"] + box["height"] / 2 - map_box["y"] - map_box["height"] / 2)


def assert_same_place(a: tuple[float, float], b: tuple[float, float]) -> None:
    assert abs(a[0] - b[0]) <= PIXEL and abs(a[1] - b[1]) <= PIXEL, (a, b)


def truck_at(page: Page, position: dict[str, float]) -> None:
    expect(truck(page)).to_have_attribute("data-lat", str(position["latitude"]), timeout=ARRIVAL_MS)
    expect(truck(page)).to_have_attribute("data-lng", str(position["longitude"]))


def client_and_driver(sessions, data, people) -> tuple[Any, Any]:
    """The client on the live map of a new in-transit parcel, and its driver tracking at P1."""
    parcel_id = data.parcel(people["client"], people["driver"], status="in_transit")
    client = sessions(people["client"]["email"])
    client.page.goto(f"/parcels/{parcel_id}/track")
    expect(client.page.locator("#connection-text")).to_have_text("Live")
    driver = sessions(people["driver"]["email"], phone=True, geolocation=P1)
    driver.page.goto(f"/driver/parcels/{parcel_id}")
    driver.page.get_by_role("button", name=re.compile("^Tracking")).click()
    expect(driver.page.locator("#tracking-state")).to_have_text("On")
    truck_at(client.page, P1)
    return client, driver


def test_the_map_keeps_the_view_the_person_chose(sessions, data, people):
    client, driver = client_and_driver(sessions, data, people)
    page = client.page
    framed = settled_view(page)  # pickup, destination and the truck, framed once

    # The person zooms in with the map's button, then drags the map with the mouse.
    page.get_by_role("button", name="Zoom in").click()
    zoomed = settled_view(page, changed_from=framed)
    assert zoomed["zoom"] == framed["zoom"] + 1
    map_box = page.locator("#map").bounding_box()
    x, y = map_box["x"] + map_box["width"] * 0.75, map_box["y"] + map_box["height"] * 0.7
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 200, y - 120, steps=8)
    page.mouse.up()
    chosen = settled_view(page, changed_from=zoomed)
    pickup, destination = page.locator(".marker-pickup"), page.locator(".marker-destination")
    pickup_seen, destination_seen = from_middle(page, pickup), from_middle(page, destination)
    # Framing again (a different zoom) or centring on P2 (far from this center) would both show.
    assert chosen["zoom"] != framed["zoom"]
    assert abs(chosen["lat"] - P2["latitude"]) + abs(chosen["lng"] - P2["longitude"]) > 0.005

    driver.context.set_geolocation(P2)
    truck_at(page, P2)
    after = settled_view(page)
    assert after["zoom"] == chosen["zoom"]
    assert after["lat"] == pytest.approx(chosen["lat"], abs=1e-7)
    assert after["lng"] == pytest.approx(chosen["lng"], abs=1e-7)
    assert_same_place(from_middle(page, pickup), pickup_seen)
    assert_same_place(from_middle(page, destination), destination_seen)
    expect(page.get_by_label("Follow driver")).not_to_be_checked()
    assert client.script_errors() == [] and driver.script_errors() == []


def test_follow_driver_recentres_on_each_update_until_turned_off(sessions, data, people):
    client, driver = client_and_driver(sessions, data, people)
    page = client.page
    settled_view(page)
    assert max(map(abs, from_middle(page, truck(page)))) > 20  # framed: the truck is not in the middle

    follow = page.get_by_label("Follow driver")
    follow.check()
    expect(follow).to_be_checked()
    centred_on(page, P1)
    assert_same_place(from_middle(page, truck(page)), (0, 0))

    for position in (P2, P3):  # two successive updates, each one re-centres the map on the truck
        driver.context.set_geolocation(position)
        truck_at(page, position)
        centred_on(page, position)
        assert_same_place(from_middle(page, truck(page)), (0, 0))

    follow.uncheck()
    expect(follow).not_to_be_checked()
    kept = settled_view(page)
    driver.context.set_geolocation(P4)
    truck_at(page, P4)
    after = settled_view(page)
    assert (after["lat"], after["lng"], after["zoom"]) == pytest.approx((kept["lat"], kept["lng"], kept["zoom"]),
                                                                        abs=1e-7)
    assert max(map(abs, from_middle(page, truck(page)))) > 3 * PIXEL  # the truck moved on; the map did not follow
    assert client.script_errors() == [] and driver.script_errors() == []
