"""The live map and the driver's page in a real browser: the seed's Client View and Driver View."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import screenshot, truck

DRIVER_START = {"latitude": 28.6, "longitude": 77.2, "accuracy": 8}
DRIVER_NEXT = {"latitude": 28.599, "longitude": 77.201, "accuracy": 8}  # a drivable step (no low-quality jump)
DRIVER_AFTER_OFF = {"latitude": 28.598, "longitude": 77.202, "accuracy": 8}
ARRIVAL_MS = 13_000  # the next send (every 5 s), then the glide over the interval

# Records every WebSocket a page opens, so a test can write on the page's own socket
# from "the console" (the page exposes no handle to it).
CAPTURE_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = function (...args) { const ws = new Native(...args); window.__sockets.push(ws); return ws; };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, { OPEN: 1, CLOSED: 3, CONNECTING: 0, CLOSING: 2 });
})();
"""

# What anyone logged in could type in the console: a socket of their own, one location sent.
SEND_FROM_CONSOLE = """
async ({ parcelId, lat, lng, address }) => {
  const { access } = await (await fetch("/api/token/ws/")).json();
  const ws = new WebSocket(`ws://${location.host}/ws/tracking/?parcel_id=${parcelId}&token=${access}`);
  return await new Promise((resolve) => {
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "subscribed") {
        ws.send(JSON.stringify({ type: "location_update", lat, lng, address, parcel_id: parcelId }));
      } else if (message.type === "error" || (message.type === "location_update" && message.location.lat === lat)) {
        ws.close();
        resolve(message);
      }
    };
  });
}
"""


@pytest.fixture
def people(data):
    """Fresh people (and parcel) for each test: no test sees what another left behind."""
    client = data.user("client", "Chitra Client")
    driver = data.user("driver", "Dinesh Driver")
    return {"client": client, "driver": driver, "parcel": data.parcel(client, driver, status="picked_up")}


def pill(page: Page):
    return page.locator("#connection-text")


def open_map(sessions, email: str, parcel_id: int, capture_sockets: bool = False):
    """A logged-in session on a parcel's live map, once it is Live."""
    session = sessions(email)
    if capture_sockets:
        session.page.add_init_script(CAPTURE_SOCKETS)
    session.page.goto(f"/parcels/{parcel_id}/track")
    expect(pill(session.page)).to_have_text("Live")
    return session


def test_client_sees_live_map_with_pickup_and_destination(sessions, people):
    session = open_map(sessions, people["client"]["email"], people["parcel"])
    page = session.page
    expect(page.locator(".marker-pickup")).to_be_visible()
    expect(page.locator(".marker-destination")).to_be_visible()
    expect(page.locator("#parcel-status")).to_have_text("Picked up")
    expect(page.locator("#pickup-address")).to_have_text("India Gate, New Delhi")
    expect(page.locator("#destination-address")).to_have_text("Hauz Khas, New Delhi")
    expect(page.locator("#toasts")).to_contain_text("Connected")
    expect(page.locator("path.route-ahead")).to_have_count(1)  # picked up: the route is drawn
    assert session.script_errors() == []


def test_driver_tracking_moves_the_clients_truck(sessions, people):
    client = open_map(sessions, people["client"]["email"], people["parcel"])
    driver = sessions(people["driver"]["email"], phone=True, geolocation=DRIVER_START)
    page = driver.page
    page.goto(f"/driver/parcels/{people['parcel']}")
    state = page.locator("#tracking-state")
    expect(state).to_have_text("Off")
    expect(pill(page)).to_have_text("Offline")

    page.get_by_role("button", name=re.compile("^Tracking")).click()
    expect(state).to_have_text("On")
    expect(page.get_by_role("button", name=re.compile("^Tracking"))).to_have_attribute("aria-pressed", "true")
    expect(pill(page)).to_have_text("Live")
    expect(truck(client.page)).to_have_attribute("data-lat", "28.6", timeout=ARRIVAL_MS)
    expect(truck(client.page)).to_have_attribute("data-lng", "77.2")
    expect(client.page.locator("#driver-position")).to_have_text("28.60000, 77.20000")
    expect(page.locator("#last-sent")).not_to_have_text("Not yet")
    expect(page.locator("#accuracy")).to_have_text("±8 m")

    updated = client.page.locator("#updated")
    expect(updated).to_have_text(re.compile(r"^Updated \d+ s ago$"))
    before = updated.inner_text()
    expect(updated).not_to_have_text(before, timeout=3_000)  # it ticks

    driver.context.set_geolocation(DRIVER_NEXT)
    expect(truck(client.page)).to_have_attribute("data-lat", "28.599", timeout=ARRIVAL_MS)
    expect(truck(client.page)).to_have_attribute("data-lng", "77.201")
    expect(truck(client.page)).to_have_count(1)  # moved, never re-created
    screenshot(page, "driver-phone.png")
    screenshot(client.page, "client-map-desktop.png")

    page.get_by_role("button", name=re.compile("^Tracking")).click()
    expect(state).to_have_text("Off")
    expect(pill(page)).to_have_text("Offline")
    driver.context.set_geolocation(DRIVER_AFTER_OFF)
    # Longer than a sending period with no update at all, shown by the client's own clock:
    expect(updated).to_have_text(re.compile(r"^Updated ([7-9]|\d\d) s ago$"), timeout=12_000)
    expect(truck(client.page)).to_have_attribute("data-lat", "28.599")
    assert client.script_errors() == [] and driver.script_errors() == []


def test_driver_status_buttons_reach_the_client(sessions, data, people):
    driver_user = data.user("driver", "Sanjay Driver")
    parcel_id = data.parcel(people["client"], driver_user)
    client = open_map(sessions, people["client"]["email"], parcel_id)
    status_text = client.page.locator("#parcel-status")
    expect(status_text).to_have_text("Driver assigned")
    expect(client.page.locator("path.route-ahead")).to_have_count(0)

    driver = sessions(driver_user["email"], phone=True)
    page = driver.page
    page.goto(f"/driver/parcels/{parcel_id}")
    buttons = {name: page.get_by_role("button", name=name, exact=True)
               for name in ("Picked up", "In transit", "Delivered")}
    expect(buttons["In transit"]).to_be_disabled()
    buttons["Picked up"].click()
    expect(page.locator("#parcel-status")).to_have_text("Picked up")
    expect(status_text).to_have_text("Picked up")
    expect(client.page.locator("#toasts")).to_contain_text("Parcel status: Picked up")
    expect(client.page.locator("path.route-ahead")).to_have_count(1)
    expect(buttons["Picked up"]).to_be_disabled()
    buttons["In transit"].click()
    expect(status_text).to_have_text("In transit")
    buttons["Delivered"].click()
    page.get_by_role("dialog").get_by_role("button", name="Yes, delivered").click()  # it asks first
    expect(status_text).to_have_text("Delivered")
    expect(page.locator("#parcel-status")).to_have_text("Delivered")
    expect(page.get_by_role("button", name=re.compile("^Tracking"))).to_be_disabled()
    assert client.script_errors() == [] and driver.script_errors() == []


def test_client_page_cannot_send(sessions, people):
    page = open_map(sessions, people["client"]["email"], people["parcel"], capture_sockets=True).page
    senders = page.get_by_role("button", name=re.compile("tracking|picked up|in transit|delivered", re.I))
    expect(senders).to_have_count(0)
    page.evaluate("""() => window.__sockets.at(-1).send(JSON.stringify(
        { type: "location_update", lat: 10, lng: 10 }))""")
    expect(page.locator("#toasts")).to_contain_text("only the parcel's assigned driver can send its location")
    expect(pill(page)).to_have_text("Live")  # the socket stays open
    answer = page.evaluate(SEND_FROM_CONSOLE, {"parcelId": people["parcel"], "lat": 11, "lng": 11, "address": ""})
    assert answer == {"type": "error", "message": "only the parcel's assigned driver can send its location"}
    expect(truck(page)).to_have_count(0)  # nothing was accepted, so no truck is drawn


def test_addresses_are_shown_as_text(sessions, data, people):
    script = "<script>window.__pwned = 1</script>"
    image = '<img src="x" onerror="window.__pwned = 2">'
    parcel_id = data.parcel(people["client"], people["driver"], status="in_transit", pickup=script, destination=image)
    driver = sessions(people["driver"]["email"])
    typed = '<b onmouseover="window.__pwned = 3">Gate 2</b> & <i>co</i>'
    sent = driver.page.evaluate(SEND_FROM_CONSOLE,
                                {"parcelId": parcel_id, "lat": 28.57, "lng": 77.21, "address": typed})
    assert sent["location"]["address"] == typed

    session = sessions(people["client"]["email"])
    page = session.page
    page.clock.install()
    page.goto("/parcels")
    expect(page.locator(f"#parcel-{parcel_id}")).to_contain_text(script)
    page.goto(f"/parcels/{parcel_id}/track")
    expect(pill(page)).to_have_text("Live")
    expect(page.locator("#pickup-address")).to_have_text(script)
    expect(page.locator("#destination-address")).to_have_text(image)
    expect(page.locator("#driver-position")).to_have_text(f"{typed} (28.57000, 77.21000)")
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("#driver-position b, #pickup-address script, #destination-address img").count() == 0

    # 30 s without an update: the position is marked stale, in words.
    expect(page.locator("#stale")).to_be_hidden()
    page.clock.fast_forward("00:35")
    expect(page.locator("#stale")).to_be_visible()
    expect(page.locator("#stale")).to_have_text("Stale")
    expect(page.locator("#updated")).to_have_text(re.compile(r"^Updated 3\d s ago$"))


def test_driver_is_told_when_location_is_denied(sessions, people):
    driver = sessions(people["driver"]["email"], phone=True)  # no geolocation permission granted
    page = driver.page
    page.goto(f"/driver/parcels/{people['parcel']}")
    page.get_by_role("button", name=re.compile("^Tracking")).click()
    expect(page.get_by_role("alert")).to_contain_text("Location permission is denied")
    expect(page.locator("#tracking-state")).to_have_text("Off")


def test_a_reassigned_driver_is_stopped_and_told_why(sessions, data, people):
    parcel_id = data.parcel(people["client"], people["driver"], status="picked_up")
    driver = sessions(people["driver"]["email"], phone=True, geolocation=DRIVER_START)
    page = driver.page
    page.goto(f"/driver/parcels/{parcel_id}")
    page.get_by_role("button", name=re.compile("^Tracking")).click()
    expect(pill(page)).to_have_text("Live")
    data.call("POST", f"/api/parcels/{parcel_id}/assign/", {"driver_id": data.user("driver", "Nikhil Next")["id"]})
    expect(pill(page)).to_have_text("Error")
    expect(page.get_by_role("alert")).to_have_text("Tracking stopped: you are no longer assigned to this parcel")
    expect(page.locator("#tracking-state")).to_have_text("Off")


def test_an_ended_login_leads_back_to_the_login_page(sessions, people):
    session = open_map(sessions, people["client"]["email"], people["parcel"], capture_sockets=True)
    page = session.page
    session.context.clear_cookies()  # logged out elsewhere, or the cookie expired
    page.evaluate("() => window.__sockets.at(-1).close()")  # the next connect needs a new token
    expect(page).to_have_url(re.compile(rf"/login\?next=%2Fparcels%2F{people['parcel']}%2Ftrack$"))


# Counts the location updates a page sends, whichever socket it sends them on.
COUNT_SENDS = """
(() => {
  const send = WebSocket.prototype.send;
  window.__locations = 0;
  WebSocket.prototype.send = function (data) {
    if (JSON.parse(data).type === "location_update") window.__locations += 1;
    return send.call(this, data);
  };
})();
"""


def test_the_driver_page_sends_the_position_every_five_seconds(sessions, people):
    driver = sessions(people["driver"]["email"], phone=True, geolocation=DRIVER_START)
    page = driver.page
    page.clock.install()
    page.add_init_script(COUNT_SENDS)
    page.goto(f"/driver/parcels/{people['parcel']}")
    page.get_by_role("button", name=re.compile("^Tracking")).click()
    expect(pill(page)).to_have_text("Live")
    # The first fix goes out at once. A function: an expression still false when first asked is
    # polled with eval(), which the page's CSP refuses.
    page.wait_for_function("() => window.__locations >= 1")
    page.clock.pause_at(page.evaluate("Date.now()") + 10)  # from here on, time moves only when told
    sent = page.evaluate("window.__locations")
    page.clock.run_for(15_000)  # whatever the phase, a 5-second rhythm ticks exactly 3 times in 15 s
    assert page.evaluate("window.__locations") - sent == 3
    page.clock.run_for(20_000)
    assert page.evaluate("window.__locations") - sent == 7
    assert driver.script_errors() == []
