"""A delivery business's day in a real browser (issue 19, CONTRACT §10), every step through the
pages: the dispatcher adds a driver and imports the day's parcels from a CSV file, then orders
the driver's stops; the driver works through them on a phone, failing one ("nobody home") and
delivering the recipient's with a photo, a signature and a name; the recipient's share page
counts the stops before theirs down and ends with the proof; the dispatcher finds the failed
parcel first and gives it to the driver again."""

from __future__ import annotations

import csv
import re
import uuid
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD, screenshot, start_shift
from tests.browser.test_browser_proof import fill_proof

SHOTS = Path("/tmp/shots-day")
COLUMNS = ["client_email", "pickup_lat", "pickup_lng", "pickup_address", "destination_lat", "destination_lng",
           "destination_address", "recipient_name", "driver_email"]


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)
    screenshot(page, f"day-{name}")


def day_file(folder: Path, shop: str, driver: str) -> Path:
    """20 parcels from one shop; the last three are on the new driver's route already."""
    path = folder / "today.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for n in range(20):
            writer.writerow([shop, "28.6129", "77.2295", "Shop, Connaught Place", f"{28.50 + n / 200:.4f}",
                             f"{77.10 + n / 200:.4f}", f"House {n + 1}, Saket", f"Recipient {n + 1}",
                             driver if n >= 17 else ""])
    return path


def test_a_day_run_in_the_pages(sessions, data, tmp_path):
    shop = data.user("client", "Corner Shop")
    desk = sessions(data.admin_email).page

    # A new driver, added on /dispatch/people.
    driver_email = f"day-driver-{uuid.uuid4().hex[:6]}@example.test"
    desk.goto("/dispatch/people")
    add = desk.locator(".people-add")
    add.get_by_label("Name").fill("Dev Day")
    add.get_by_label("E-mail").fill(driver_email)
    add.get_by_label("Role").select_option("driver")
    add.get_by_label("Password").fill(PASSWORD)
    add.get_by_role("button", name="Add this person").click()
    expect(desk.locator("#people-notice")).to_contain_text(f"Added Dev Day ({driver_email}) as a driver")

    # The day's 20 parcels from a CSV file, checked, then imported.
    desk.goto("/dispatch/import")
    desk.locator("#file").set_input_files(day_file(tmp_path, shop["email"], driver_email))  # choosing it checks it
    expect(desk.locator("#import-ready")).to_contain_text("Every row is ready: 20 parcels")
    desk.get_by_role("button", name="Import 20 parcels").click()
    expect(desk.locator("#import-result")).to_contain_text("20 parcels imported")
    mine = [p for p in data.call("GET", "/api/parcels/?limit=500") if p["owner_id"] == shop["id"]]
    assert len(mine) == 20
    a, b, r = sorted(p["id"] for p in mine if p["driver_id"] is not None)  # in the file's order: its route
    assert [p["stops_before"] for p in sorted(mine, key=lambda p: p["id"]) if p["driver_id"]] == [0, 1, 2]
    link = data.call("POST", f"/api/parcels/{r}/share/")["url"]

    # The driver starts the shift and takes all three on board.
    driver = start_shift(sessions, driver_email)
    phone = driver.page
    for parcel_id in (a, b, r):
        for step in ("picked_up", "in_transit"):
            button = phone.locator(f"#step-{parcel_id}-{step}")
            expect(button).to_be_enabled()
            button.click()
        expect(phone.locator(f"#parcel-{parcel_id} .status")).to_have_text("In transit")
    expect(phone.locator(f"#parcel-{r}")).to_contain_text("Recipient 20")  # whom to ask for, from the file

    # The recipient of the third stop follows it; the dispatcher moves it up one stop.
    recipient = sessions(phone=True)
    share = recipient.page
    share.goto(link)
    expect(share.locator("#stops-before")).to_have_text("2 stops before yours.")
    desk.goto("/dispatch")
    desk.locator(f"#parcel-{r}").get_by_role("button", name=f"Move parcel #{r} one stop earlier").click()
    expect(desk.locator("#dispatch-notice")).to_have_text(f"Parcel #{r} is now stop 2 of its driver's route.")
    expect(share.locator("#stops-before")).to_have_text("1 stop before yours.")
    expect(phone.locator("#route .route-stop").nth(1)).to_have_attribute("data-parcel-id", str(r))

    # Nobody is home at the first stop.
    phone.locator(f"#step-{a}-failed").click()
    phone.get_by_label("Nobody home").check()
    phone.get_by_role("button", name="Not delivered").click()
    expect(phone.locator(f"#parcel-{a}")).to_have_count(0)
    expect(share.locator("#stops-before")).to_have_text("Your parcel is the driver's next stop.")
    shot(share, "share-next-stop.png")

    # The recipient's parcel is delivered with a photo, a signature and a name.
    phone.locator(f"#step-{r}-delivered").click()
    expect(phone.get_by_role("dialog")).to_be_visible()
    fill_proof(phone, "Asha Verma")
    shot(phone, "proof-dialog.png")
    phone.get_by_role("dialog").get_by_role("button", name="Yes, delivered").click()
    expect(phone.locator(f"#parcel-{r}")).to_have_count(0)
    expect(share.locator("#parcel-status")).to_have_text("Delivered")
    expect(share.locator("#stops-before")).to_be_hidden()
    expect(share.locator("#proof")).to_be_visible()
    expect(share.locator("#proof-name")).to_have_text("Asha Verma")
    assert share.locator("#proof-photo").evaluate("img => img.naturalWidth") > 0
    shot(share, "share-proof.png")

    # The dispatcher finds the failed parcel first and gives it to the driver again.
    desk.goto("/dispatch")
    attention = desk.locator("#attention")
    expect(attention).to_contain_text("Nobody home")
    shot(desk, "dispatch-attention.png")
    attention.locator(f"#driver-{a}").fill(driver_email)
    attention.get_by_role("button", name=f"Assign again parcel #{a}").click()
    expect(desk.locator("#attention")).to_have_count(0)
    expect(desk.locator(f"#parcel-{a} .stop-of")).to_have_text("Stop 2 of 2")  # after the stop still open
    expect(phone.locator(f"#parcel-{a}")).to_be_visible()  # back on the driver's list, live
    assert data.call("GET", f"/api/parcels/{a}/")["attempts"] == 1
    for session in (driver, recipient):
        assert session.script_errors() == [], session.script_errors()
    assert re.search(r"/driver$", phone.url)
