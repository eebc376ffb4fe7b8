"""A page that loses its connection for a while misses nothing (CONTRACT §12, issue 21): it
reconnects with the last offset it saw and gets what it missed, or, told it cannot (after a
restart without Redis), fetches the driven path from the history again.

The browser reaches the app through a TCP hop of the test's (`Cable`) that can be cut: an
established WebSocket outlives Chromium's emulated offline mode (Playwright issue 4910), so
cutting the hop is what makes the page miss the messages sent while it is away, while the
server and the driver go on. The driver is a logged-in page holding a tracking socket of its
own (tests/browser/test_browser_recipient.py's `Driver`), straight to the server.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PHONE, pill, screenshot, truck
from tests.browser.test_browser_recipient import DESTINATION, PICKUP, Driver, towards

PATH_SAMPLES = "() => Number(document.getElementById('map').dataset.pathSamples || 0)"
# Every fetch of the path's history so far (the Resource Timing entries of its URL), in order.
HISTORY_FETCHES = """() => performance.getEntriesByType("resource").map((e) => e.name)
  .filter((name) => /\\/locations\\/?(\\?|$)/.test(new URL(name).pathname + new URL(name).search))"""
STEP_M = 40  # metres between two fixes sent 0.8 s apart: 50 m/s, a believable (not "low") fix


class Cable:
    """A TCP hop 127.0.0.1:<port> → the app, which the test cuts (every connection through it
    closed, new ones refused) and restores."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.is_cut = False
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = None if self.is_cut else socket.create_connection(("127.0.0.1", self.target_port), 2)
            except OSError:
                upstream = None  # the app is down
            if upstream is None:
                client.close()
                continue
            upstream.settimeout(None)  # the connect's timeout would end a quiet socket
            with self.lock:
                self.open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        self._drop(source, sink)

    def _drop(self, *ends: socket.socket) -> None:
        for end in ends:
            with self.lock:
                self.open.discard(end)
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def cut(self) -> None:
        self.is_cut = True
        with self.lock:
            ends = list(self.open)
        self._drop(*ends)

    def restore(self) -> None:
        self.is_cut = False

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def cable(server) -> Iterator[Cable]:
    hop = Cable(server.port)
    yield hop
    hop.close()


def open_track_page(sessions, cable: Cable, email: str | None, parcel_id: int, phone: bool = False,
                    share_token: str = ""):
    """The client's track page, logged in and opened through the cable (or, with `share_token`, that
    link's share page, no login); → (session, the URLs of its sockets)."""
    session = sessions(phone=phone)
    page = session.page
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    if email:
        page.goto(f"{cable.url}/login")
        session.login(email)
        expect(page).not_to_have_url(re.compile(r"/login"))
    page.goto(f"{cable.url}/t/{share_token}" if share_token else f"{cable.url}/parcels/{parcel_id}/track")
    expect(pill(page)).to_have_text("Live")
    return session, sockets


def away(page: Page, cable: Cable) -> None:
    """The phone loses its network: its connections through the cable die, and the page says so."""
    cable.cut()
    page.context.set_offline(True)
    expect(pill(page)).to_have_text(re.compile("^(Offline|Connecting)$"))


def back(page: Page, cable: Cable) -> None:
    """The network comes back (the browser's `online` event: the page reconnects at once)."""
    cable.restore()
    page.context.set_offline(False)
    expect(pill(page)).to_have_text("Live", timeout=15_000)


def close_up(page: Page) -> None:
    """Follow the driver and zoom in, so a screenshot shows the path driven around the truck."""
    page.get_by_label("Follow driver").check()  # the map pans to the truck
    page.wait_for_timeout(800)
    for _ in range(3):
        page.get_by_role("button", name="Zoom in").click()  # about the map's centre: the truck
        page.wait_for_timeout(600)
    page.locator("#map").scroll_into_view_if_needed()
    expect(truck(page)).to_be_in_viewport()


def samples(page: Page) -> int:
    return page.evaluate(PATH_SAMPLES)


def test_a_page_that_was_away_gets_what_it_missed_in_order(sessions, data, cable):
    client = data.user("client", "Rhea Reconnect")
    driver_user = data.user("driver", "Rohan Recover")
    parcel_id = data.parcel(client, driver_user, status="picked_up")
    session, sockets = open_track_page(sessions, cable, client["email"], parcel_id)
    page = session.page
    expect(page.locator("#parcel-status")).to_have_text("Picked up")

    driver = Driver(sessions, driver_user["email"], parcel_id)
    start = towards(DESTINATION, PICKUP, 380)  # outside the destination's zone (150 m, left at 225 m)
    first = driver.send(*start, pause=1)  # the next fix 40 m on: not a jump
    expect(truck(page)).to_have_attribute("data-lat", str(first["location"]["lat"]))
    page.wait_for_function(f"{PATH_SAMPLES} === 1")
    expect(page.locator("#nearby")).to_be_hidden()
    page.wait_for_timeout(2000)  # a first live fix on an empty path asks the history once (path.js): let it
    fetched = page.evaluate(HISTORY_FETCHES)

    away(page, cable)
    missed = []
    for i in range(1, 7):  # up to 140 m from the destination: inside its zone
        missed.append(driver.send(*towards(start, DESTINATION, i * STEP_M), pause=0.8))
        if i == 3:
            data.call("POST", f"/api/parcels/{parcel_id}/status/", {"status": "in_transit"})
    assert page.locator("#parcel-status").inner_text() == "Picked up"  # nothing reached it meanwhile
    assert samples(page) == 1
    back(page, cable)

    expect(page.locator("#parcel-status")).to_have_text("In transit")
    expect(page.locator("#nearby")).to_be_visible()  # the geofence entry made while it was away
    last = missed[-1]["location"]
    expect(truck(page)).to_have_attribute("data-lat", str(last["lat"]))
    page.wait_for_function(f"{PATH_SAMPLES} === 7")  # every fix, the six it missed included
    # Recovered, not reloaded: the reconnect asked for what came after the last offset it saw,
    # and the history was not fetched again.
    tracking = [url for url in sockets if "/ws/tracking/" in url]
    assert len(tracking) >= 2, tracking
    assert "since=" not in tracking[0] and re.search(r"[?&]since=\d+&epoch=[^&]+", tracking[-1]), tracking
    page.wait_for_timeout(2000)  # a duplicate or a late reload would show by now
    assert samples(page) == 7
    assert page.evaluate(HISTORY_FETCHES) == fetched
    statuses = [row.strip() for row in page.locator("#timeline li.is-done .timeline-label").all_inner_texts()]
    assert statuses[-1] == "Picked up", statuses
    expect(page.locator("#timeline li.is-current .timeline-label")).to_have_text("In transit")
    expect(page.locator(".toast")).to_have_count(0, timeout=12_000)  # a clean picture
    close_up(page)
    screenshot(page, "track-recovered-desktop.png")
    assert session.script_errors() == [] and driver.session.script_errors() == []


def test_a_share_page_that_was_away_gets_the_fixes_it_missed(sessions, data, cable):
    client = data.user("client", "Sana Share")
    driver_user = data.user("driver", "Sunil Share")
    parcel_id = data.parcel(client, driver_user, status="in_transit")
    link = data.call("POST", f"/api/parcels/{parcel_id}/share/")
    session, sockets = open_track_page(sessions, cable, None, parcel_id, phone=True, share_token=link["token"])
    page = session.page

    driver = Driver(sessions, driver_user["email"], parcel_id)
    start = towards(PICKUP, DESTINATION, 300)
    first = driver.send(*start, pause=1)
    expect(truck(page)).to_have_attribute("data-lat", str(first["location"]["lat"]))
    page.wait_for_function(f"{PATH_SAMPLES} === 1")
    page.wait_for_timeout(2000)  # a first live fix on an empty path asks the history once (path.js): let it
    fetched = page.evaluate(HISTORY_FETCHES)

    away(page, cable)
    missed = [driver.send(*towards(start, DESTINATION, i * STEP_M), pause=0.8) for i in range(1, 6)]
    back(page, cable)

    expect(truck(page)).to_have_attribute("data-lat", str(missed[-1]["location"]["lat"]))
    page.wait_for_function(f"{PATH_SAMPLES} === 6")
    assert re.search(r"[?&]since=\d+&epoch=[^&]+", sockets[-1]), sockets
    page.wait_for_timeout(2000)
    assert samples(page) == 6
    assert page.evaluate(HISTORY_FETCHES) == fetched  # recovered: the history was not fetched again
    assert session.script_errors() == [] and driver.session.script_errors() == []


def test_a_page_that_cannot_recover_reloads_the_path_from_the_history(sessions, data, server, cable):
    client = data.user("client", "Rita Reload")
    driver_user = data.user("driver", "Raju Restart")
    parcel_id = data.parcel(client, driver_user, status="in_transit")
    session, sockets = open_track_page(sessions, cable, client["email"], parcel_id, phone=True)
    page = session.page

    driver = Driver(sessions, driver_user["email"], parcel_id)
    start = towards(PICKUP, DESTINATION, 300)
    seen = [driver.send(*towards(start, DESTINATION, i * STEP_M), pause=0.8)["timestamp"] for i in range(2)]
    page.wait_for_function(f"{PATH_SAMPLES} === 2")
    page.wait_for_timeout(2000)  # a first live fix on an empty path asks the history once (path.js): let it
    fetched = page.evaluate(HISTORY_FETCHES)

    away(page, cable)
    server.stop()  # no Redis (BROKER_URL is empty): what was held is gone with the process
    server.start()
    driver = Driver(sessions, driver_user["email"], parcel_id)
    sent = [driver.send(*towards(start, DESTINATION, i * STEP_M), pause=0.8) for i in range(2, 9)]
    driver.close()  # the driver's latest fix is written when its socket closes
    token = server.token(client["email"], "browser-pass")
    deadline = time.monotonic() + 10
    while True:  # samples are written on a short timer
        status, answer = server.api("GET", f"/api/parcels/{parcel_id}/locations/", token)
        assert status == 200, answer
        stored = [sample["timestamp"] for sample in answer["locations"]]
        if sent[-1]["timestamp"] in stored or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sent[-1]["timestamp"] in stored and any(t > seen[-1] for t in stored[:-1]), stored
    back(page, cable)

    # The fixes it saw live, and the history of the rest (every fix the server kept), once each.
    whole = len(set(seen) | set(stored))
    page.wait_for_function(f"{PATH_SAMPLES} === {whole}")
    last = sent[-1]["location"]
    expect(truck(page)).to_have_attribute("data-lat", str(last["lat"]))
    tracking = [url for url in sockets if "/ws/tracking/" in url]
    assert re.search(r"[?&]since=\d+&epoch=[^&]+", tracking[-1]), tracking  # it asked, and was told no
    fetches = page.evaluate(HISTORY_FETCHES)
    assert fetches[:len(fetched)] == fetched and "since=" not in fetches[len(fetched)], fetches  # all of it, again
    page.wait_for_timeout(2000)
    assert samples(page) == whole
    expect(page.locator("#parcel-status")).to_have_text("In transit")
    expect(page.locator(".toast")).to_have_count(0, timeout=12_000)
    assert page.viewport_size == PHONE
    close_up(page)
    screenshot(page, "track-recovered-phone.png")
    assert session.script_errors() == [] and driver.session.script_errors() == []
