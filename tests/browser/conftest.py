"""Browser-test fixtures: the app as a real subprocess, data made through its CLI and API,
and Debian's Chromium driven by Playwright's sync API.

One app server per test module (on the session's database server, with a database
name of its own); one Chromium for the whole package. Nothing reaches the network:
TILE_URL points at the app's own blank tile.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright
from pymongo import MongoClient

from devtools.process import ROOT, Server, app_env, run_cli
from models.db import parse_iso
from tests.conftest import path_to

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
PASSWORD = "browser-pass"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# A truck glides to each fix over most of the driver's 5-second send interval, so a
# position is reached up to about 5 s after it was sent: every expectation gets 10 s.
expect.set_options(timeout=10_000)


class AppServer(Server):
    """`python app.py serve` in a subprocess, which tests may stop and start again on the same port."""

    def __init__(self, mongodb_uri: str, data_dir: Path) -> None:
        env = app_env(
            MONGODB_URI=mongodb_uri,
            MONGODB_DB=f"browser_{uuid.uuid4().hex[:12]}",
            SECRET_KEY="browser-test-secret-" + "k" * 40,
            TILE_URL="/static/img/tile.svg",  # the app's own blank tile: nothing reaches the network
            PUBLIC_WS_URL="",
            BROKER_URL="",
            ALLOWED_ORIGINS="",
        )
        super().__init__(env, "--host", "127.0.0.1", "--data-dir", str(data_dir), "--no-demo")
        self.data_dir = data_dir

    def cli(self, *args: str) -> str:
        done = run_cli(*args, "--data-dir", str(self.data_dir), env=self.env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


class Data:
    """Makes accounts and parcels: the first dispatcher with the CLI, the rest through the API."""

    def __init__(self, server: AppServer) -> None:
        self.server = server
        self.admin_email = f"boss-{uuid.uuid4().hex[:6]}@example.test"
        server.cli("create-user", "--email", self.admin_email, "--password", PASSWORD, "--role", "dispatcher",
                   "--name", "Dana Dispatcher")
        self.admin_token = server.token(self.admin_email, PASSWORD)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.server.api(method, path, self.admin_token, body)
        assert status < 400, (method, path, status, answer)
        return answer

    def user(self, role: str, name: str) -> dict[str, Any]:
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.test"
        return self.call("POST", "/api/users/", {"email": email, "password": PASSWORD, "role": role, "name": name})

    def parcel(self, owner: dict[str, Any], driver: dict[str, Any] | None = None, status: str = "pending",
               pickup: str = "India Gate, New Delhi", destination: str = "Hauz Khas, New Delhi") -> int:
        parcel = self.call("POST", "/api/parcels/", {
            "owner_id": owner["id"],
            "pickup": {"lat": 28.6129, "lng": 77.2295, "address": pickup},
            "destination": {"lat": 28.5494, "lng": 77.2001, "address": destination},
        })
        if driver is not None:
            self.call("POST", f"/api/parcels/{parcel['id']}/assign/", {"driver_id": driver["id"]})
        for step in path_to(status):
            self.call("POST", f"/api/parcels/{parcel['id']}/status/", {"status": step})
        return parcel["id"]


@pytest.fixture(scope="module")
def server(db_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    app = AppServer(db_server, tmp_path_factory.mktemp("app"))
    app.start()
    yield app
    app.stop()
    # Its database goes too: with MONGODB_URI the app makes a TTL index, and the session's
    # embedded server sweeps every TTL collection each minute under its lock, stalling the
    # tests that come after (docs/protocol.md, "What is stored").
    with MongoClient(db_server) as client:
        client.drop_database(app.env["MONGODB_DB"])


@pytest.fixture(scope="module")
def data(server: AppServer) -> Data:
    return Data(server)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Session:
    """A browser context logged in as one person (its own cookies), and its pages' console errors."""

    def __init__(self, browser: Browser, server: AppServer, phone: bool = False,
                 geolocation: dict[str, float] | None = None) -> None:
        options: dict[str, Any] = {"base_url": server.url, "viewport": PHONE if phone else DESKTOP}
        if phone:
            options.update(is_mobile=True, has_touch=True, device_scale_factor=2)
        if geolocation:
            options.update(geolocation=geolocation, permissions=["geolocation"])
        self.context: BrowserContext = browser.new_context(**options)
        self.context.set_default_timeout(10_000)
        self.errors: list[str] = []
        self.page = self.new_page()

    def new_page(self) -> Page:
        page = self.context.new_page()
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        return page

    def login(self, email: str, password: str = PASSWORD) -> Page:
        """Fill the login form (the one on screen if the page shows it already)."""
        page = self.page
        if "/login" not in page.url:
            page.goto("/login")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        return page

    def script_errors(self) -> list[str]:
        """Uncaught exceptions and CSP refusals (a failed socket while the server is down is expected)."""
        return [e for e in self.errors if e.startswith("uncaught") or "Content Security Policy" in e]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def sessions(browser: Browser, server: AppServer) -> Iterator[Any]:
    """`sessions(email, phone=False, geolocation=None)` → a logged-in Session; all closed afterwards."""
    made: list[Session] = []

    def open_session(email: str | None = None, phone: bool = False,
                     geolocation: dict[str, float] | None = None) -> Session:
        session = Session(browser, server, phone, geolocation)
        made.append(session)
        if email:
            session.login(email)
            expect(session.page).not_to_have_url(re.compile(r"/login"))
        return session

    yield open_session
    for session in made:
        session.close()


# Fixes a truck could drive between two sends (a jump faster than 70 m/s would be a weak fix).
START = {"latitude": 28.6, "longitude": 77.2, "accuracy": 8}
NEXT = {"latitude": 28.601, "longitude": 77.201, "accuracy": 8}
WEAK = {"latitude": 28.3, "longitude": 77.6, "accuracy": 900}  # worse than 100 m: quality "low"
AFTER_WEAK = {"latitude": 28.6015, "longitude": 77.2015, "accuracy": 8}


def truck(page: Page) -> Locator:
    """The driver's marker on a live map."""
    return page.locator(".marker-driver")


def at(timestamp: str) -> float:
    """A timestamp of the API or the socket, in seconds since the epoch."""
    return parse_iso(timestamp).timestamp()


def pill(page: Page) -> Locator:
    """The page's connection state ("Live", "Offline", …)."""
    return page.locator("#connection-text")


def start_shift(sessions: Any, email: str, geolocation: dict = START) -> Session:
    """The driver's /driver page, on a phone at `geolocation`, with the shift started and live."""
    driver = sessions(email, phone=True, geolocation=geolocation)
    page = driver.page
    page.goto("/driver")
    expect(pill(page)).to_have_text("Offline")
    toggle = page.locator("#shift-toggle")
    expect(toggle).to_have_text("Start my shift")
    toggle.click()
    expect(toggle).to_have_text("End my shift")
    expect(pill(page)).to_have_text("Live")
    return driver


def record_latitudes(marker: Locator) -> Callable[[], list[str]]:
    """Record every latitude `marker` is drawn at from now on (its data-lat); → what it was
    drawn at so far. A marker that was replaced meanwhile fails the reading."""
    marker.evaluate("""marker => {
        marker.drawnAt = [];
        new MutationObserver(() => marker.drawnAt.push(marker.dataset.lat))
          .observe(marker, {attributes: true, attributeFilter: ["data-lat"]});
    }""")

    def drawn_at() -> list[str]:
        seen = marker.evaluate("marker => marker.drawnAt || null")
        assert seen is not None, "the marker was replaced"
        return seen

    return drawn_at


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    return path
