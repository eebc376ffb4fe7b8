"""A failed delivery and the route in a real browser (CONTRACT §10): the driver says why a
parcel could not be delivered, the dispatcher finds it first under "Needs attention" and
moves stops on a route, and the recipient's share page counts the stops before theirs live."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import screenshot

SHOTS = Path("/tmp/shots-route")


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)
    screenshot(page, f"route-{name}")


def test_a_failed_delivery_leads_dispatch_and_the_share_page_counts_the_stops(sessions, data):
    driver_user = data.user("driver", "Route Rani")
    owner = data.user("client", "Shop Owner")
    first, second, third = [data.parcel(owner, driver_user, status="in_transit") for _ in range(3)]
    link = data.call("POST", f"/api/parcels/{third}/share/")["url"]

    recipient = sessions(phone=True)
    recipient.page.goto(link)
    expect(recipient.page.locator("#stops-before")).to_have_text("2 stops before yours.")
    shot(recipient.page, "share-two-before.png")

    # The dispatcher moves the recipient's parcel up one stop: their page counts down, live.
    dispatcher = sessions(data.admin_email)
    desk = dispatcher.page
    desk.goto("/dispatch")
    row = desk.locator(f"#parcel-{third}")
    expect(row.locator(".stop-of")).to_have_text("Stop 3 of 3")
    row.get_by_role("button", name=f"Move parcel #{third} one stop earlier").click()
    expect(desk.locator("#dispatch-notice")).to_have_text(f"Parcel #{third} is now stop 2 of its driver's route.")
    expect(recipient.page.locator("#stops-before")).to_have_text("1 stop before yours.")

    # The driver cannot deliver the first stop: they say why, on the phone.
    driver = sessions(driver_user["email"], phone=True)
    page = driver.page
    page.goto("/driver")
    page.locator(f"#step-{first}-failed").click()
    dialog = page.locator("#fail-dialog")
    expect(dialog).to_be_visible()
    page.get_by_role("button", name="Not delivered").click()
    expect(page.locator("#fail-problem")).to_be_visible()  # a reason first
    page.get_by_label("Nobody home").check()
    page.get_by_label(re.compile("Note for the dispatcher")).fill("Rang twice, gate locked")
    shot(page, "fail-dialog.png")
    page.get_by_role("button", name="Not delivered").click()
    expect(dialog).to_be_hidden()
    expect(page.locator(f"#parcel-{first}")).to_have_count(0)  # it left the route
    expect(recipient.page.locator("#stops-before")).to_have_text("Your parcel is the driver's next stop.")
    shot(recipient.page, "share-next-stop.png")

    # The dispatcher sees it first, with the reason and note, and gives it to the driver again.
    desk.goto("/dispatch")
    attention = desk.locator("#attention")
    expect(attention).to_contain_text("Nobody home: Rang twice, gate locked")
    expect(attention.locator(f"#parcel-{first}")).to_be_visible()
    shot(desk, "dispatch-attention.png")
    attention.locator(f"#driver-{first}").fill(driver_user["email"])
    attention.get_by_role("button", name=f"Assign again parcel #{first}").click()
    expect(desk.locator("#attention")).to_have_count(0)
    expect(desk.locator(f"#parcel-{first} .stop-of")).to_have_text("Stop 3 of 3")  # last on the route
    assert driver.script_errors() == [] and recipient.script_errors() == [] and dispatcher.script_errors() == []
