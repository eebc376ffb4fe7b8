"""What the recipient sees, in a real browser (CONTRACT §7, issue 10): the share page opened
without a login, the ETA, the timeline, the driven path and its replay, the gliding and fading
truck, notifications while the tab is hidden, and share links made and revoked from the track page.

The driver is simulated by a logged-in browser page holding one tracking socket of its own
(what any driver could type in the console): its fixes reach the pages through the real
server, which computes the ETA, the fix quality and the geofences.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from models.db import iso
from tests.browser.conftest import PHONE, at, screenshot, truck

PICKUP = (28.6129, 77.2295)  # tests/browser/conftest.py Data.parcel's pickup and destination
DESTINATION = (28.5494, 77.2001)
ROAD = [PICKUP, (28.6020, 77.2287), (28.5968, 77.2180)]  # south, then south-west: a road with a bend
METRES_PER_DEGREE = 111_195

# The driver's own socket, opened once from a logged-in page; window.__send(message) sends one
# message and resolves with the first answer to it (the broadcast of that fix, or an error).
OPEN_DRIVER_SOCKET = """
async (parcelId) => {
  const { access } = await (await fetch("/api/token/ws/")).json();
  const ws = new WebSocket(`ws://${location.host}/ws/tracking/?parcel_id=${parcelId}&token=${access}`);
  await new Promise((resolve, reject) => {
    ws.addEventListener("message", (e) => { if (JSON.parse(e.data).type === "subscribed") resolve(); });
    ws.addEventListener("close", (e) => reject(new Error(`closed ${e.code}`)));
  });
  window.__send = (message, lat, lng) => new Promise((resolve) => {
    const timer = setTimeout(() => { ws.removeEventListener("message", answer); resolve({ type: "timeout" }); }, 5000);
    const answer = (event) => {
      const m = JSON.parse(event.data);
      if (m.type === "error" || (m.type === "location_update" && m.location.lat === lat && m.location.lng === lng)) {
        clearTimeout(timer);
        ws.removeEventListener("message", answer);
        resolve(m);
      }
    };
    ws.addEventListener("message", answer);
    ws.send(JSON.stringify(message));
  });
  window.__closeDriver = () => ws.close();
}
"""

# Records every notification instead of showing it, and lets the test hide the tab.
RECORD_NOTIFICATIONS = """
(() => {
  window.__notes = [];
  window.__permission = "default";
  class RecordedNotification {
    constructor(title, options = {}) {
      if (window.__constructorThrows) throw new TypeError("Illegal constructor");
      window.__notes.push({ title, body: options.body || "", via: "page" });
    }
    static get permission() { return window.__permission; }
    static requestPermission() { window.__permission = "granted"; return Promise.resolve("granted"); }
    close() {}
  }
  window.Notification = RecordedNotification;
  if (window.ServiceWorkerRegistration) {
    ServiceWorkerRegistration.prototype.showNotification = function (title, options = {}) {
      window.__notes.push({ title, body: options.body || "", via: "worker", scope: this.scope });
      return Promise.resolve();
    };
  }
  Object.defineProperty(Document.prototype, "visibilityState",
    { configurable: true, get() { return window.__hidden ? "hidden" : "visible"; } });
  Object.defineProperty(Document.prototype, "hidden",
    { configurable: true, get() { return Boolean(window.__hidden); } });
  window.__setHidden = (hidden) => {
    window.__hidden = hidden;
    document.dispatchEvent(new Event("visibilitychange"));
  };
})();
"""

# True once #map has settled (no zoom or pan animation) at `zoom` or closer.
SETTLED_AT_ZOOM = """(zoom) => {
  const map = document.getElementById("map");
  const pane = map.querySelector(".leaflet-map-pane");
  return Number(map.dataset.zoom) >= zoom && !/leaflet-(pan|zoom)-anim/.test(pane.className);
}"""

# Records the longest gap between two ticks of a 50 ms timer: a frozen page shows as a long gap.
WATCH_FOR_FREEZES = """
(() => {
  window.__longestGap = 0;
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    window.__longestGap = Math.max(window.__longestGap, now - last);
    last = now;
  }, 50);
})();
"""


def towards(start: tuple[float, float], end: tuple[float, float], metres: float) -> tuple[float, float]:
    """The point `metres` from `start` on the straight line to `end`, rounded as a GPS would give it."""
    dlat = (end[0] - start[0]) * METRES_PER_DEGREE
    dlng = (end[1] - start[1]) * METRES_PER_DEGREE * math.cos(math.radians(start[0]))
    k = metres / math.hypot(dlat, dlng)
    return (round(start[0] + (end[0] - start[0]) * k, 6), round(start[1] + (end[1] - start[1]) * k, 6))


def along_route(waypoints: list[tuple[float, float]], step_m: float) -> list[tuple[float, float]]:
    """Points every `step_m` metres along the legs between `waypoints` (the last one included)."""
    points: list[tuple[float, float]] = []
    for start, end in zip(waypoints, waypoints[1:], strict=False):
        leg = math.hypot((end[0] - start[0]) * METRES_PER_DEGREE,
                         (end[1] - start[1]) * METRES_PER_DEGREE * math.cos(math.radians(start[0])))
        points += [towards(start, end, i * step_m) for i in range(int(leg // step_m))]
    return points + [waypoints[-1]]


class Driver:
    """A driver's browser page holding the parcel's tracking socket: sends fixes and waits for their broadcast."""

    def __init__(self, sessions, email: str, parcel_id: int) -> None:
        self.session = sessions(email)
        self.page = self.session.page
        self.page.goto("/api/me/")  # a page that opens no socket of its own
        self.page.evaluate(OPEN_DRIVER_SOCKET, parcel_id)
        self.parcel_id = parcel_id

    def send(self, lat: float, lng: float, accuracy: float = 5, pause: float = 0.15) -> dict[str, Any]:
        """One fix; its broadcast back (with `eta`). `pause` keeps well under 10 messages a second."""
        message = {"type": "location_update", "lat": lat, "lng": lng, "accuracy": accuracy,
                   "parcel_id": self.parcel_id}
        answer = self.page.evaluate("([m, lat, lng]) => window.__send(m, lat, lng)", [message, lat, lng])
        assert answer["type"] == "location_update", answer
        time.sleep(pause)
        return answer

    def drive(self, start: tuple[float, float], end: tuple[float, float], steps: int, step_m: float,
              every: float = 0.5) -> list[dict[str, Any]]:
        """`steps` fixes from `start` towards `end`, `step_m` metres apart, `every` seconds apart."""
        return [self.send(*towards(start, end, i * step_m), pause=every) for i in range(steps)]

    def batch(self, fixes: list[dict[str, Any]]) -> dict[str, Any]:
        last = fixes[-1]
        message = {"type": "location_batch", "parcel_id": self.parcel_id, "locations": fixes}
        return self.page.evaluate("([m, lat, lng]) => window.__send(m, lat, lng)", [message, last["lat"], last["lng"]])

    def drove_earlier(self, waypoints: list[tuple[float, float]], ended_ago: float = 20) -> tuple[float, float]:
        """The road driven before the test: one offline batch (every fix stored at its `recorded_at`),
        50 m every 5 s along `waypoints`, the last fix `ended_ago` seconds ago. Returns where it ended."""
        points = along_route(waypoints, 50)
        end = datetime.now(UTC) - timedelta(seconds=ended_ago)
        fixes = [{"lat": lat, "lng": lng, "address": "", "accuracy": 6,
                  "recorded_at": iso(end - timedelta(seconds=5 * (len(points) - 1 - i)))}
                 for i, (lat, lng) in enumerate(points)]
        answer = self.batch(fixes)
        assert answer["type"] == "location_update", answer
        return points[-1]

    def close(self) -> None:
        self.page.evaluate("window.__closeDriver()")


@pytest.fixture
def people(data):
    """A client, a driver and an in-transit parcel of theirs, fresh for each test."""
    client = data.user("client", "Rekha Recipient")
    driver = data.user("driver", "Dev Driver")
    return {"client": client, "driver": driver, "parcel": data.parcel(client, driver, status="in_transit")}


def share_link(data, parcel_id: int) -> dict[str, Any]:
    link = data.call("POST", f"/api/parcels/{parcel_id}/share/")
    assert re.fullmatch(r"https?://[^/]+/t/[^/]+", link["url"]), link
    return link


def open_share_page(sessions, link: dict[str, Any], phone: bool = True, init_script: str = ""):
    """The share page in a fresh browser context: no login, no cookie of anyone's."""
    session = sessions(phone=phone)
    if init_script:
        session.page.add_init_script(init_script)
    session.page.goto("/t/" + link["token"])
    expect(session.page.locator("#connection-text")).to_have_text("Live")
    return session


def open_track_page(sessions, email: str, parcel_id: int, init_script: str = ""):
    session = sessions(email)
    if init_script:
        session.page.add_init_script(init_script)
    session.page.goto(f"/parcels/{parcel_id}/track")
    expect(session.page.locator("#connection-text")).to_have_text("Live")
    return session


def centre(page: Page, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    assert box, selector
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def eta_text(eta: dict[str, Any]) -> str:
    """What the page should say for a broadcast's `eta` (static/js/eta.js): minutes to the nearest
    one under an hour, as surely as its confidence ("about", a range, "roughly ..., still estimating")."""
    def minutes(seconds: float) -> int:
        return max(1, round(seconds / 60))
    assert minutes(eta["seconds"]) < 60, "the tests drive less than an hour away"
    place = "the pickup" if eta["to"] == "pickup" else "the destination"
    low, high = minutes(min(eta["range"][0], eta["seconds"])), minutes(max(eta["range"][1], eta["seconds"]))
    assert eta["confidence"] == "low" or high < 60, eta
    if eta["confidence"] == "low":
        return f"Driver arrives at {place} in roughly {minutes(eta['seconds'])} min, still estimating"
    if eta["confidence"] == "medium" and low != high:
        return f"Driver arrives at {place} in {low}–{high} min"
    return f"Driver arrives at {place} in about {minutes(eta['seconds'])} min"


def timeline_rows(page: Page) -> list[tuple[str, str, bool]]:
    """(label, state class, has a time) of each step of #timeline."""
    return [tuple(row) for row in page.locator("#timeline li").evaluate_all(
        """items => items.map(li => [li.querySelector('.timeline-label').textContent,
                                   [...li.classList].find(c => c.startsWith('is-')),
                                   Boolean(li.querySelector('time'))])""")]


# -- the share page -----------------------------------------------------------------------------


def test_share_page_without_login_shows_the_truck_moving_the_eta_and_the_timeline(sessions, data, people):
    link = share_link(data, people["parcel"])
    session = open_share_page(sessions, link)
    page = session.page
    expect(page.locator("#parcel-status")).to_have_text("In transit")
    expect(page.locator("#driver-name")).to_have_text("Dev Driver")
    expect(page.locator("#pickup-address")).to_have_text("India Gate, New Delhi")
    expect(page.locator("#destination-address")).to_have_text("Hauz Khas, New Delhi")
    expect(page.locator(".topnav, form[action='/logout']")).to_have_count(0)  # no login, no navigation
    rows = timeline_rows(page)
    assert [r[0] for r in rows] == ["Waiting for a driver", "Driver assigned", "Picked up", "In transit", "Delivered"]
    assert [r[1] for r in rows] == ["is-done", "is-done", "is-done", "is-current", "is-next"]
    assert [r[2] for r in rows] == [True, True, True, True, False]  # times for the statuses passed
    expect(page.locator("#eta")).to_be_hidden()  # no estimate yet: nothing rather than nonsense

    driver = Driver(sessions, people["driver"]["email"], people["parcel"])
    start = driver.drove_earlier(ROAD)  # before the parcel went in_transit: not the recipient's business
    page.wait_for_timeout(1500)
    expect(truck(page)).to_have_count(0)
    assert page.locator("#map").get_attribute("data-path-samples") in (None, "0")
    start = towards(start, DESTINATION, 20)
    first = driver.send(*start)
    expect(truck(page)).to_have_attribute("data-lat", str(first["location"]["lat"]))
    box_before = centre(page, ".marker-driver")
    sent = driver.drive(start, DESTINATION, steps=8, step_m=12)  # 24 m/s straight at the destination
    driven = 1 + len(sent)  # every live fix, none of the road driven before
    page.wait_for_function(f"() => Number(document.getElementById('map').dataset.pathSamples) === {driven}")
    last = sent[-1]
    expect(truck(page)).to_have_attribute("data-lat", str(last["location"]["lat"]))
    expect(truck(page)).to_have_attribute("data-lng", str(last["location"]["lng"]))
    assert centre(page, ".marker-driver") != box_before  # the truck moved on screen
    eta = last["eta"]
    assert eta and eta["to"] == "destination", last
    expect(page.locator("#eta-text")).to_have_text(eta_text(eta))
    expect(page.locator("#eta-detail")).to_have_text(re.compile(r"^\d+(\.\d)? km away$"))
    expect(page.locator("path.route-path")).to_have_count(1)
    expect(page.locator("#driver-position")).to_have_text(re.compile(r"^\d+(\.\d)? k?m from the destination$"))

    html = page.content()
    for person in (people["client"], people["driver"]):
        assert person["email"] not in html  # no e-mail address leaves through a link
    shown = json.loads(page.locator("#tracker").get_attribute("data-parcel"))
    assert "owner_id" not in shown and "driver_id" not in shown, shown  # no user id either
    expect(page.locator(".toast")).to_have_count(0, timeout=8_000)  # a clean picture
    screenshot(page, "share-page-phone.png")
    assert session.script_errors() == [] and driver.session.script_errors() == []


def test_revoking_from_the_track_page_turns_the_open_share_page_invalid(sessions, people):
    owner = open_track_page(sessions, people["client"]["email"], people["parcel"])
    page = owner.page
    owner.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Create share link").click()
    url_box = page.get_by_label("Share link")
    expect(url_box).to_have_value(re.compile(r"^https?://[^/]+/t/[\w.-]+$"))
    expect(url_box).to_have_attribute("readonly", "")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#share-message")).to_have_text("Link copied.")
    url = url_box.input_value()
    assert page.evaluate("navigator.clipboard.readText()") == url

    viewer = open_share_page(sessions, {"token": url.rsplit("/", 1)[1]})
    expect(viewer.page.locator("#parcel-status")).to_have_text("In transit")
    page.get_by_role("button", name="Revoke links").click()
    expect(page.locator("#share-message")).to_have_text("Every share link of this parcel has stopped working.")
    expect(viewer.page.get_by_role("heading", name="This link is no longer valid.")).to_be_visible()
    expect(viewer.page.locator("#map")).to_be_hidden()
    expect(viewer.page.locator("#connection-text")).to_have_text("Error")

    again = viewer.page.goto(url)  # the link itself is dead too
    assert again.status == 404
    expect(viewer.page.locator("#error-title")).to_have_text("This link is no longer valid.")
    expect(viewer.page.locator("#error-message")).to_contain_text("Ask the sender for a new link.")
    # no "Go to the login page" for someone without an account
    expect(viewer.page.get_by_text(re.compile(r"log ?in", re.I))).to_have_count(0)
    assert owner.script_errors() == [] and viewer.script_errors() == []


def test_a_finished_parcel_leaves_the_share_page_on_its_final_status(sessions, data, people):
    link = share_link(data, people["parcel"])
    viewer = open_share_page(sessions, link)
    page = viewer.page
    driver = Driver(sessions, people["driver"]["email"], people["parcel"])
    near = driver.send(*towards(DESTINATION, PICKUP, 100))
    expect(truck(page)).to_have_attribute("data-lat", str(near["location"]["lat"]))
    data.call("POST", f"/api/parcels/{people['parcel']}/status/", {"status": "delivered"})
    expect(page.locator("#parcel-status")).to_have_text("Delivered")
    expect(page.locator("#finished-note")).to_contain_text("Delivered on ")
    expect(page.locator("#finished-note")).to_contain_text("Tracking has ended.")
    expect(page.locator("#connection-text")).to_have_text("Delivered")  # the pill says so too, not "Offline"
    expect(page.locator("#connection")).to_have_attribute("data-state", "ended")
    expect(page.locator("#connection-detail")).to_have_text("")  # ... and that is no error: tracking is over
    expect(page.get_by_role("heading", name="This link is no longer valid.")).to_be_hidden()
    expect(truck(page)).to_have_count(0)  # no stale truck
    expect(page.locator("#replay")).to_be_hidden()
    rows = timeline_rows(page)
    assert rows[-1] == ("Delivered", "is-current", True)

    again = sessions(phone=True).page  # opened afresh, the page says the same
    again.goto("/t/" + link["token"])
    expect(again.locator("#connection-text")).to_have_text("Delivered")
    expect(again.locator("#finished-note")).to_contain_text("Tracking has ended.")
    again.wait_for_timeout(1000)
    expect(again.locator("#connection-text")).to_have_text("Delivered")
    expect(truck(again)).to_have_count(0)
    assert viewer.script_errors() == [] and driver.session.script_errors() == []


def test_before_the_parcel_is_on_its_way_the_share_page_shows_its_status_and_no_truck(sessions, data, people):
    # A driver of its own: with other stops before it, the link would not show the truck once in transit.
    own_driver = data.user("driver", "Only Stop Omar")
    parcel_id = data.parcel(people["client"], own_driver, status="assigned")
    driver = Driver(sessions, own_driver["email"], parcel_id)
    driver.send(*towards(PICKUP, DESTINATION, 2000))  # on the way to the pickup, at another customer's maybe
    viewer = open_share_page(sessions, share_link(data, parcel_id))
    page = viewer.page
    expect(page).to_have_title("Your parcel: Driver assigned · Parcel Tracking")
    expect(page.locator("#parcel-title")).to_have_text("Your parcel")
    expect(page.locator("#position-note")).to_contain_text("once your parcel is on its way")
    expect(page.locator("#replay")).to_be_hidden()
    page.wait_for_timeout(1000)
    expect(truck(page)).to_have_count(0)
    moved = towards(PICKUP, DESTINATION, 1990)
    driver.send(*moved, pause=1.0)
    page.wait_for_timeout(1000)
    expect(truck(page)).to_have_count(0)  # live fixes do not reach it either
    assert page.locator("#map").get_attribute("data-path-samples") in (None, "0")

    for step in ("picked_up", "in_transit"):
        data.call("POST", f"/api/parcels/{parcel_id}/status/", {"status": step})
    expect(page.locator("#parcel-status")).to_have_text("In transit")
    expect(page.locator("#position-note")).to_be_hidden()
    on_its_way = driver.send(*towards(moved, DESTINATION, 20))
    expect(truck(page)).to_have_attribute("data-lat", str(on_its_way["location"]["lat"]))
    expect(page.locator("#replay")).to_be_visible()
    page.wait_for_function("() => Number(document.getElementById('map').dataset.pathSamples) === 1")
    assert viewer.script_errors() == [] and driver.session.script_errors() == []


# -- the driven path and its replay --------------------------------------------------------------


def test_the_path_grows_as_the_driver_moves_and_replay_moves_the_marker(sessions, data, people):
    driver = Driver(sessions, people["driver"]["email"], people["parcel"])
    start = driver.drove_earlier(ROAD)  # the history before the page opens

    session = open_track_page(sessions, people["client"]["email"], people["parcel"])
    page = session.page
    samples = "() => Number(document.getElementById('map').dataset.pathSamples || 0)"
    page.wait_for_function(f"() => ({samples})() >= 2")
    drawn_before = page.locator("path.route-path").get_attribute("d")
    count_before = page.evaluate(samples)

    driver.drive(towards(start, DESTINATION, 20), DESTINATION, steps=8, step_m=20, every=0.4)
    page.wait_for_function(f"() => ({samples})() >= {count_before + 7}")
    expect(page.locator("path.route-path")).not_to_have_attribute("d", drawn_before or "")
    expect(page.locator("#eta-text")).to_have_text(  # a few seconds measured: still estimating
        re.compile(r"^Driver arrives at the destination in (about \d+|\d+–\d+|roughly \d+) min(, still estimating)?$"))
    expect(page.locator(".toast")).to_have_count(0, timeout=8_000)  # a clean picture
    screenshot(page, "track-page-desktop.png")

    # Scrub to the start: the replay marker is where the path began, at the time shown.
    slider = page.get_by_label("Time on the driven path")
    expect(page.locator("#replay-time")).to_have_text("Live")
    slider.fill("0")
    ghost = page.locator(".marker-replay")
    expect(ghost).to_have_count(1)
    first_lat = float(ghost.get_attribute("data-lat"))
    oldest = data.call("GET", f"/api/parcels/{people['parcel']}/locations/?limit=1")["locations"][0]
    assert first_lat == oldest["lat"], (first_lat, oldest)
    expect(page.locator("#replay-time")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d"))
    expect(page.get_by_role("button", name="Back to live")).to_be_visible()

    # Play: the marker moves along the path on its own, towards the destination.
    page.get_by_role("button", name="Play").click()
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    page.wait_for_function(f"() => Number(document.querySelector('.marker-replay').dataset.lat) < {first_lat - 0.0005}")
    page.get_by_role("button", name="Pause").click()
    paused_at = ghost.get_attribute("data-lat")
    page.wait_for_timeout(300)
    assert ghost.get_attribute("data-lat") == paused_at

    page.get_by_role("button", name="Back to live").click()
    expect(ghost).to_have_count(0)
    expect(page.locator("#replay-time")).to_have_text("Live")
    assert session.script_errors() == [] and driver.session.script_errors() == []


def test_a_long_history_is_drawn_simplified_without_freezing_the_page(sessions, people):
    driver = Driver(sessions, people["driver"]["email"], people["parcel"])
    begin = datetime.now(UTC) - timedelta(hours=3)
    total, per_batch = 10_000, 200
    for b in range(total // per_batch):
        fixes = []
        for i in range(b * per_batch, (b + 1) * per_batch):
            along = towards(PICKUP, DESTINATION, i * 0.6)
            wobble = 0.000012 * math.sin(i * 1.7)  # about a metre of GPS noise
            fixes.append({"lat": round(along[0] + wobble, 7), "lng": round(along[1] - wobble, 7), "address": "",
                          "recorded_at": (begin + timedelta(seconds=i)).isoformat(timespec="milliseconds")
                          .replace("+00:00", "Z")})
        answer = driver.batch(fixes)
        assert answer["type"] != "error", answer
        time.sleep(0.12)  # a batch counts as one message against 10 a second

    session = open_track_page(sessions, people["client"]["email"], people["parcel"], init_script=WATCH_FOR_FREEZES)
    page = session.page
    page.wait_for_function("() => Number(document.getElementById('map').dataset.pathSamples) >= 10000",
                           timeout=30_000)
    drawn = int(page.locator("#map").get_attribute("data-path-points"))
    assert 2 <= drawn < 1000, drawn  # a near-straight road: a handful of points, not ten thousand
    assert page.evaluate("window.__longestGap") < 500  # the page kept answering while it loaded
    page.get_by_label("Time on the driven path").fill("5000")  # the replay covers the whole history
    expect(page.locator(".marker-replay")).to_have_count(1)
    assert session.script_errors() == []


# -- the truck: gliding, fading ------------------------------------------------------------------


def test_the_truck_glides_between_fixes_and_fades_when_they_stop(sessions, people):
    driver = Driver(sessions, people["driver"]["email"], people["parcel"])
    session = sessions(people["client"]["email"])
    page = session.page
    page.clock.install()
    page.goto(f"/parcels/{people['parcel']}/track")
    expect(page.locator("#connection-text")).to_have_text("Live")

    a = towards(PICKUP, DESTINATION, 3000)
    b = towards(a, DESTINATION, 50)
    sent_a = driver.send(*a)
    expect(truck(page)).to_have_attribute("data-lat", str(a[0]))
    # Zoom in around the truck (the wheel keeps the point under the mouse), so 50 m is many pixels.
    page.mouse.move(*centre(page, ".marker-driver"))
    page.mouse.wheel(0, -600)
    page.wait_for_function(SETTLED_AT_ZOOM, arg=16)
    time.sleep(1)  # 50 m in over a second: a speed the server believes (docs/protocol.md, fix quality)
    now = datetime.fromtimestamp(page.evaluate("Date.now()") / 1000, UTC)
    page.clock.pause_at(now + timedelta(milliseconds=10))  # from here on, time moves only when told
    at_a = centre(page, ".marker-driver")

    sent_b = driver.send(*b)
    expect(page.locator("#driver-position")).to_have_text(f"{b[0]:.5f}, {b[1]:.5f}")  # the fix has arrived
    expect(truck(page)).to_have_attribute("data-lat", str(a[0]))  # ... and the truck has not jumped to it
    # The glide lasts 90 % of the time between the two fixes, at most 90 % of the 5 s send
    # interval (static/js/glide.js): half of it is the middle, whatever the machine's pace.
    gap_ms = (at(sent_b["timestamp"]) - at(sent_a["timestamp"])) * 1000
    glide_ms = min(0.9 * 5000, 0.9 * gap_ms)
    page.clock.run_for(round(glide_ms / 2))
    middle = centre(page, ".marker-driver")
    page.clock.run_for(round(glide_ms / 2) + 600)
    expect(truck(page)).to_have_attribute("data-lat", str(b[0]))
    at_b = centre(page, ".marker-driver")
    span = (at_b[0] - at_a[0], at_b[1] - at_a[1])
    assert math.hypot(*span) > 10, (at_a, at_b)  # far enough apart on screen to tell
    k = ((middle[0] - at_a[0]) * span[0] + (middle[1] - at_a[1]) * span[1]) / (span[0] ** 2 + span[1] ** 2)
    assert 0.05 < k < 0.95, (at_a, middle, at_b)  # on its way: neither still at A nor already at B

    marker = page.locator(".marker-driver")
    expect(marker).not_to_have_class(re.compile(r"\bis-faded\b"))
    expect(page.locator(".last-seen-label")).to_have_count(0)
    page.clock.run_for(35_000)
    expect(marker).to_have_class(re.compile(r"\bis-faded\b"))
    page.wait_for_function(  # drawn faded (a CSS transition, which runs on real time)
        "() => Number(getComputedStyle(document.querySelector('.marker-driver')).opacity) < 0.6")
    expect(page.locator(".last-seen-label")).to_have_text(re.compile(r"^Last seen 3\d s ago$"))
    page.clock.run_for(90_000)
    expect(page.locator(".last-seen-label")).to_have_text("Last seen 2 min ago")  # it keeps counting

    page.clock.resume()
    page.clock.set_system_time(datetime.now(UTC))  # the page's clock back beside the server's
    c = towards(b, DESTINATION, 20)
    driver.send(*c)
    expect(truck(page)).to_have_attribute("data-lat", str(c[0]))
    expect(marker).not_to_have_class(re.compile(r"\bis-faded\b"))  # fixes again: no longer faded
    expect(page.locator(".last-seen-label")).to_have_count(0)
    assert session.script_errors() == []


# -- notifications ---------------------------------------------------------------------------------


def test_a_notification_is_raised_while_the_tab_is_hidden(sessions, data, people):
    own_driver = data.user("driver", "Only Stop Nisha")  # its next stop: the link shows the truck
    parcel_id = data.parcel(people["client"], own_driver, status="picked_up")
    link = share_link(data, parcel_id)
    viewer = open_share_page(sessions, link, phone=False, init_script=RECORD_NOTIFICATIONS)
    page = viewer.page
    page.get_by_role("button", name="Notify me").click()
    expect(page.locator("#notify")).to_have_text("Notifications on")

    # On screen, the page itself says it: no notification.
    data.call("POST", f"/api/parcels/{parcel_id}/status/", {"status": "in_transit"})
    expect(page.locator("#parcel-status")).to_have_text("In transit")
    assert timeline_rows(page)[-2] == ("In transit", "is-current", True)

    driver = Driver(sessions, own_driver["email"], parcel_id)
    near = towards(DESTINATION, PICKUP, 400)
    driver.send(*near, pause=1.0)
    expect(truck(page)).to_have_attribute("data-lat", str(near[0]))
    page.evaluate("window.__setHidden(true)")
    for metres in (340, 280, 220, 160, 100, 60):  # at most 60 m a second towards the destination
        driver.send(*towards(DESTINATION, PICKUP, metres), pause=1.0)
    page.wait_for_function("() => window.__notes.length >= 1")
    notes = page.evaluate("window.__notes")
    assert notes == [{"title": "Driver is nearby", "via": "page",
                      "body": "Your parcel: the driver is close to the destination."}], notes
    expect(page.locator("#nearby")).to_contain_text("Driver is nearby")

    data.call("POST", f"/api/parcels/{parcel_id}/status/", {"status": "delivered"})
    page.wait_for_function("() => window.__notes.length >= 2")
    assert page.evaluate("window.__notes[1]")["title"] == "Your parcel: Delivered"
    assert viewer.script_errors() == [] and driver.session.script_errors() == []


def test_without_a_notification_constructor_the_service_worker_shows_it(sessions, data, people):
    """Chrome for Android: `new Notification()` throws; registration.showNotification is the way."""
    session = open_track_page(sessions, people["client"]["email"], people["parcel"],
                              init_script=RECORD_NOTIFICATIONS + "window.__constructorThrows = true;")
    page = session.page
    page.get_by_role("button", name="Notify me").click()
    expect(page.locator("#notify")).to_have_text("Notifications on")
    page.evaluate("window.__setHidden(true)")
    data.call("POST", f"/api/parcels/{people['parcel']}/status/", {"status": "delivered"})
    page.wait_for_function("() => window.__notes.length >= 1")
    note = page.evaluate("window.__notes[0]")
    assert note["title"] == f"Parcel #{people['parcel']}: Delivered" and note["via"] == "worker", note
    assert re.search(r"/static/js/$", note["scope"]), note
    assert page.evaluate("window.__notes.length") == 1


def test_the_share_page_fits_a_phone(sessions, data, people):
    link = share_link(data, people["parcel"])
    page = open_share_page(sessions, link).page
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width  # nothing wider than the phone: no sideways scrolling
    for element in ("#parcel-status", "#map", "#replay-play", "#replay-slider"):
        box = page.locator(element).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (element, box)
    assert page.locator("#map").bounding_box()["height"] >= 300
