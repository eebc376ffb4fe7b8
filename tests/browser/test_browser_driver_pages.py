"""The driver's two pages as one shift in a real browser (issue 17, the driver's part): the shift
started on /driver goes on through a parcel's page and back (one route socket, remembered for
the tab), "Delivered" asks first and says how far the destination is, and the list says its
numbers are the order the parcels came in, with a link to the customer's map named as such."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import NEXT, PASSWORD, pill, screenshot, start_shift, truck

SHOTS = Path("/tmp/shots-driver")  # looked at by people: the pages at phone size
AFTER_NEXT = {"latitude": 28.602, "longitude": 77.202, "accuracy": 8}
# The parcels' destination (tests/browser/conftest.py: Data.parcel) is 28.5494, 77.2001.
NEAR = {"latitude": 28.5503, "longitude": 77.2003, "accuracy": 7}  # about 100 m away
FAR = {"latitude": 28.6400, "longitude": 77.2001, "accuracy": 9}  # about 10 km away
ARRIVAL_MS = 13_000  # the next send (every 5 s), then the glide


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name))
    screenshot(page, f"driver-{name}")


def open_track(sessions, email: str, parcel_id: int):
    session = sessions(email)
    session.page.goto(f"/parcels/{parcel_id}/track")
    expect(pill(session.page)).to_have_text("Live")
    return session


def status_posts(page: Page) -> list[str]:
    """Every status change the page asks the server for, from now on."""
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/status" in r.url else None)
    return posts


def test_the_shift_goes_on_through_a_parcels_page_and_back(sessions, data):
    driver_user = data.user("driver", "Steady Sunil")
    owner = data.user("client", "Owner One")
    first = data.parcel(owner, driver_user, status="in_transit")
    second = data.parcel(data.user("client", "Owner Two"), driver_user, status="picked_up")
    owner_map = open_track(sessions, owner["email"], first)
    driver = start_shift(sessions, driver_user["email"])
    page = driver.page
    expect(truck(owner_map.page)).to_have_attribute("data-lat", "28.6", timeout=ARRIVAL_MS)

    # Opening a parcel keeps the shift on: the parcel page says so, and its toggle is the shift's.
    page.get_by_role("link", name=f"Drive parcel #{first}").click()
    expect(page).to_have_url(re.compile(rf"/driver/parcels/{first}$"))
    expect(page.locator("#tracking-state")).to_have_text("On")
    expect(page.get_by_role("button", name=re.compile("^Tracking"))).to_have_attribute("aria-pressed", "true")
    expect(pill(page)).to_have_text("Live")
    expect(page.locator("#sharing-for")).to_have_text("This parcel and 1 other")
    expect(page.locator("#tracking-help")).to_contain_text("Your shift is on")
    # The position keeps flowing to the owner while the driver is on the parcel's page.
    driver.context.set_geolocation(NEXT)
    expect(truck(owner_map.page)).to_have_attribute("data-lat", "28.601", timeout=ARRIVAL_MS)
    expect(page.locator("#last-sent")).not_to_have_text("Not yet")
    page.evaluate("() => window.scrollTo(0, 0)")
    shot(page, "parcel-sharing.png")

    # Back (the browser's Back): the shift still shares, and the fixes still reach the owner.
    page.go_back()
    expect(page).to_have_url(re.compile(r"/driver$"))
    expect(page.locator("#shift-toggle")).to_have_text("End my shift")
    expect(page.locator("#sharing-for")).to_have_text("2 parcels")
    expect(pill(page)).to_have_text("Live")
    driver.context.set_geolocation(AFTER_NEXT)
    expect(truck(owner_map.page)).to_have_attribute("data-lat", "28.602", timeout=ARRIVAL_MS)
    shot(page, "driver-shift-on.png")

    # Turning tracking off on a parcel's page ends the shift on /driver too.
    page.get_by_role("link", name=f"Drive parcel #{second}").click()
    expect(page.locator("#tracking-state")).to_have_text("On")
    page.get_by_role("button", name=re.compile("^Tracking")).click()
    expect(page.locator("#tracking-state")).to_have_text("Off")
    expect(page.locator("#sharing-for")).to_have_text("Not sharing")
    expect(pill(page)).to_have_text("Offline")
    page.get_by_role("link", name="← My deliveries").click()
    expect(page).to_have_url(re.compile(r"/driver$"))
    expect(page.locator("#shift-toggle")).to_have_text("Start my shift")
    expect(page.locator("#sharing-for")).to_have_text("Not sharing")
    expect(pill(page)).to_have_text("Offline")
    assert driver.script_errors() == [] and owner_map.script_errors() == []


def test_delivered_asks_first_and_says_how_far_the_destination_is(sessions, data, server):
    driver_user = data.user("driver", "Careful Kavya")
    owner = data.user("client", "Owner Three")
    on_list = data.parcel(owner, driver_user, status="in_transit")
    on_page = data.parcel(owner, driver_user, status="in_transit")
    driver = start_shift(sessions, driver_user["email"], geolocation=NEAR)
    page = driver.page
    posts = status_posts(page)
    expect(page.locator("#accuracy")).to_have_text("±7 m")
    stop = page.locator(f"#parcel-{on_list}")
    deliver = stop.get_by_role("button", name=re.compile("^Delivered"))
    dialog = page.get_by_role("dialog")

    # Near the destination: a plain question, Cancel focused first; Escape sends nothing.
    deliver.click()
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading")).to_have_text(f"Mark parcel #{on_list} as delivered?")
    expect(page.locator("#deliver-far")).to_be_hidden()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    shot(page, "deliver-near.png")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(deliver).to_be_focused()  # back where the driver was

    # Far from it: the question says how far; Cancel sends nothing either.
    driver.context.set_geolocation(FAR)
    expect(page.locator("#accuracy")).to_have_text("±9 m")
    deliver.click()
    expect(dialog).to_be_visible()
    expect(page.locator("#deliver-far")).to_have_text(
        "You are about 10 km from the destination (Hauz Khas, New Delhi).")
    shot(page, "deliver-far.png")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    page.wait_for_timeout(500)
    assert posts == []
    token = server.token(owner["email"], PASSWORD)
    assert server.api("GET", f"/api/parcels/{on_list}/", token)[1]["status"] == "in_transit"

    # With the keyboard: Tab to "Yes, delivered", Enter; the parcel is delivered and leaves the list.
    deliver.click()
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Yes, delivered")).to_be_focused()
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.locator(f"#parcel-{on_list}")).to_have_count(0)
    expect(page.locator("#finished")).to_contain_text(f"Parcel #{on_list}")
    assert len(posts) == 1

    # The parcel's page asks the same, from the shift's latest good fix.
    page.get_by_role("link", name=f"Drive parcel #{on_page}").click()
    expect(page.locator("#tracking-state")).to_have_text("On")
    expect(page.locator("#accuracy")).to_have_text("±9 m")
    page.get_by_role("button", name="Delivered", exact=True).click()
    expect(page.locator("#deliver-far")).to_have_text(
        "You are about 10 km from the destination (Hauz Khas, New Delhi).")
    shot(page, "deliver-far-parcel-page.png")
    dialog.get_by_role("button", name="Yes, delivered").click()
    expect(page.locator("#parcel-status")).to_have_text("Delivered")
    expect(page.locator("#tracking-help")).to_contain_text("Your shift goes on")
    assert len(posts) == 2
    assert driver.script_errors() == []


def test_the_list_says_its_order_and_links_to_the_customers_map(sessions, data):
    driver_user = data.user("driver", "Orderly Om")
    owner = data.user("client", "Owner Four")
    ids = [data.parcel(owner, driver_user, status=s) for s in ("in_transit", "assigned", "picked_up")]
    driver = sessions(driver_user["email"], phone=True)
    page = driver.page
    page.goto("/driver")
    # Numbered as the server lists them, and said to be that, not a driving order.
    expect(page.locator("#route-order")).to_have_text(re.compile("in the order of your route", re.I))
    assert page.locator("#route .stop-number").all_inner_texts() == ["1", "2", "3"]
    assert [int(i) for i in page.locator("#route > li").evaluate_all("els => els.map(e => e.dataset.parcelId)")] == ids
    expect(page.get_by_role("link", name=re.compile("^Live map"))).to_have_count(0)
    page.get_by_role("link", name=f"Customer's map of parcel #{ids[1]}").click()
    expect(page).to_have_url(re.compile(rf"/parcels/{ids[1]}/track$"))
    page.goto(f"/driver/parcels/{ids[1]}")
    expect(page.get_by_role("link", name=f"See the customer's map of parcel #{ids[1]}")).to_be_visible()
    assert driver.script_errors() == []
