"""Login, logout, role homes, refusals and the dispatcher's assignment, in a real browser."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot


@pytest.fixture
def cast(data):
    """Fresh people and a fresh parcel for each test: no test sees what another left behind."""
    client = data.user("client", "Kiran Client")
    return {
        "client": client,
        "other_client": data.user("client", "Omar Other"),
        "driver": data.user("driver", "Vikram Driver"),
        "dispatcher": data.user("dispatcher", "Priya Dispatcher"),
        "parcel": data.parcel(client, pickup="Red Fort, Delhi", destination="Lodhi Garden, Delhi"),
    }


def test_wrong_login_shows_the_message(sessions, cast):
    session = sessions()
    page = session.login(cast["client"]["email"], "not the password")
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_role("alert")).to_have_text("wrong email or password")
    expect(page.get_by_label("Email")).to_have_value(cast["client"]["email"])
    expect(page.get_by_label("Password")).to_have_value("")


@pytest.mark.parametrize(("role", "home", "heading"), [
    ("client", "/parcels", "My parcels"),
    ("driver", "/driver", "My deliveries"),
    ("dispatcher", "/dispatch", "All parcels"),
])
def test_login_goes_to_the_roles_home_and_logout_ends_it(sessions, cast, role, home, heading):
    page = sessions(cast[role]["email"]).page
    expect(page).to_have_url(re.compile(f"{home}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(home)
    expect(page).to_have_url(re.compile(r"/login\?next="))


def test_login_returns_to_the_page_asked_for(sessions, cast):
    session = sessions()
    page = session.page
    page.goto(f"/parcels/{cast['parcel']}/track")
    expect(page).to_have_url(re.compile(rf"/login\?next=%2Fparcels%2F{cast['parcel']}%2Ftrack$"))
    session.login(cast["client"]["email"])
    expect(page).to_have_url(re.compile(rf"/parcels/{cast['parcel']}/track$"))
    expect(page.locator("#connection-text")).to_have_text("Live")


@pytest.mark.parametrize(("role", "path", "wanted"), [
    ("client", "/dispatch", "dispatchers"), ("client", "/driver", "drivers"),
    ("driver", "/parcels", "clients"), ("dispatcher", "/driver", "drivers"),
])
def test_a_page_of_another_role_is_refused(sessions, cast, role, path, wanted):
    page = sessions(cast[role]["email"]).page
    response = page.goto(path)
    assert response.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(page.locator("#error-message")).to_have_text(f"This page is for {wanted}. You are logged in as a {role}.")
    expect(page.get_by_role("link", name="Go to my home page")).to_be_visible()


def test_a_client_cannot_open_someone_elses_map(sessions, cast):
    page = sessions(cast["other_client"]["email"]).page
    response = page.goto(f"/parcels/{cast['parcel']}/track")
    assert response.status == 404
    expect(page.locator("#error-message")).to_have_text("There is no such parcel, or it is not yours to see.")
    expect(page.locator("#map")).to_have_count(0)
    expect(page.get_by_text("Red Fort")).to_have_count(0)
    assert page.goto("/parcels/999999/track").status == 404  # a missing parcel looks the same


def test_dispatcher_assigns_a_driver_and_opens_the_map(sessions, cast):
    session = sessions(cast["dispatcher"]["email"])
    page = session.page
    row = page.locator(f"#parcel-{cast['parcel']}")
    expect(row).to_contain_text("Kiran Client")
    expect(row).to_contain_text("Waiting for a driver")
    picker = row.get_by_label(f"Driver for parcel #{cast['parcel']}")
    picker.fill(cast["driver"]["email"])
    screenshot(page, "dispatch-desktop.png")
    row.get_by_role("button", name=f"Assign parcel #{cast['parcel']}").click()
    expect(page.locator("#dispatch-notice")).to_have_text(
        f"Parcel #{cast['parcel']} is now assigned to Vikram Driver ({cast['driver']['email']}).")
    expect(row).to_contain_text("Driver assigned")
    expect(row.get_by_role("button", name=f"Reassign parcel #{cast['parcel']}")).to_be_visible()
    row.get_by_role("link", name=f"Live map of parcel #{cast['parcel']}").click()
    expect(page.locator("#connection-text")).to_have_text("Live")
    expect(page.locator("#parcel-status")).to_have_text("Driver assigned")

    driver = sessions(cast["driver"]["email"]).page
    expect(driver.locator(f"#parcel-{cast['parcel']}")).to_contain_text("Lodhi Garden, Delhi")
    driver.get_by_role("link", name=f"Drive parcel #{cast['parcel']}").click()
    expect(driver.locator("#tracking-state")).to_have_text("Off")
