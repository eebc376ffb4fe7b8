"""An e-mail's unsubscribe link in a real browser (docs/protocol.md, "E-mail to the
recipient"): opened without a login on a desktop and a phone, it names the address, and its
button stops the e-mails. The server has no SMTP_URL, so the e-mail is only logged; the link's
token is read from the database, where the product stored it when it queued the e-mail.
"""

from __future__ import annotations

import time

from playwright.sync_api import expect
from pymongo import MongoClient

from tests.browser.conftest import path_to, screenshot

RECIPIENT = {"name": "Asha Verma", "email": "asha.verma@home.example"}


def unsubscribe_path(server, data, owner, driver) -> str:
    """A parcel for RECIPIENT taken in transit (its "out for delivery" e-mail queued); its link's path."""
    parcel = data.call("POST", "/api/parcels/", {
        "owner_id": owner["id"], "recipient": RECIPIENT,
        "pickup": {"lat": 28.6129, "lng": 77.2295, "address": "India Gate, New Delhi"},
        "destination": {"lat": 28.5494, "lng": 77.2001, "address": "Hauz Khas, New Delhi"},
    })
    data.call("POST", f"/api/parcels/{parcel['id']}/assign/", {"driver_id": driver["id"]})
    for step in path_to("in_transit"):
        data.call("POST", f"/api/parcels/{parcel['id']}/status/", {"status": step})
    with MongoClient(server.env["MONGODB_URI"]) as client:
        addresses = client[server.env["MONGODB_DB"]]["email_addresses"]
        deadline = time.monotonic() + 10
        while (found := addresses.find_one({"_id": RECIPIENT["email"]})) is None:
            assert time.monotonic() < deadline, "the e-mail was not queued"
            time.sleep(0.05)
    return f"/u/{found['token']}"


def test_the_unsubscribe_page_asks_then_stops_the_emails_on_a_desktop_and_a_phone(server, data, sessions):
    owner, driver = data.user("client", "Chitra Client"), data.user("driver", "Ravi Kumar")
    path = unsubscribe_path(server, data, owner, driver)
    phone, desktop = sessions(phone=True).page, sessions().page
    for page, size in ((phone, "phone"), (desktop, "desktop")):
        page.goto(path)
        expect(page.get_by_role("heading", level=1)).to_have_text("Stop e-mails about your parcels?")
        expect(page.locator("#unsubscribe-message")).to_contain_text(RECIPIENT["email"])
        screenshot(page, f"unsubscribe-{size}.png")
    desktop.get_by_role("button", name="Unsubscribe").click()
    expect(desktop.get_by_role("heading", level=1)).to_have_text("You are unsubscribed")
    screenshot(desktop, "unsubscribed-desktop.png")
    phone.reload()
    expect(phone.get_by_role("heading", level=1)).to_have_text("You are unsubscribed")
    expect(phone.get_by_role("button", name="Unsubscribe")).to_have_count(0)
    screenshot(phone, "unsubscribed-phone.png")
    phone.goto("/u/not-a-token-at-all-123")
    expect(phone.get_by_role("heading", level=1)).to_have_text("Not found")
