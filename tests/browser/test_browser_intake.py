"""Parcels in, in a browser (CONTRACT §10 "Creating parcels and people in the pages"): the
dispatcher's form at /dispatch/parcels/new (typed, picked on the map, with and without
JavaScript) and the CSV import at /dispatch/import, at desk and phone sizes."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import DESKTOP, PASSWORD, screenshot

COLUMNS = ["client_email", "pickup_lat", "pickup_lng", "pickup_address", "destination_lat", "destination_lng",
           "destination_address", "recipient_name", "note", "driver_email"]


@pytest.fixture(scope="module")
def people(data) -> dict[str, Any]:
    return {"client": data.user("client", "Kiran Kumar"), "driver": data.user("driver", "Ravi Road")}


def write_csv(folder: Path, name: str, rows: list[list[str]]) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    path = folder / name
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def parcel_ids(data) -> set[int]:
    return {p["id"] for p in data.call("GET", "/api/parcels/?limit=500")}


def problem(page: Page, field: str):
    return page.locator(f"#{field}-problem")


def test_the_form_keeps_what_was_typed_shows_each_problem_by_its_field_then_creates_the_parcel(
        sessions, data, people):
    session = sessions(data.admin_email)
    page = session.page
    # The window's times are typed in the dispatcher's own zone (here India's, UTC+5:30).
    page.context.new_cdp_session(page).send("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
    page.goto("/dispatch")
    page.get_by_role("link", name="New parcel").click()
    expect(page).to_have_url(re.compile(r"/dispatch/parcels/new$"))
    zone_hint = re.compile(r"^Times are in your time zone, Asia/(Kolkata|Calcutta)\.$")  # ICU may say either
    expect(page.locator("#tz-hint")).to_have_text(zone_hint)
    typed = {
        "client_email": people["client"]["email"], "pickup_address": "Connaught Place, New Delhi",
        "pickup_point": "28.6315, 77.2167", "destination_address": "Hauz Khas Village, New Delhi",
        "destination_point": "128.55, 77.19", "recipient_name": "Asha Rao", "recipient_email": "asha@",
        "recipient_phone": "+91 98100 12345", "note": "Blue gate, ring twice.",
        "window_from": "2026-01-08T14:00", "window_to": "2026-01-08T13:00",
    }
    for name, value in typed.items():
        page.locator(f"#{name}").fill(value)
    before = parcel_ids(data)
    page.get_by_role("button", name="Create parcel").click()
    expect(page.locator("#form-problems")).to_contain_text("Nothing was created: 3 fields need a change.")
    expect(problem(page, "destination_point")).to_have_text("The latitude (first number) must be between -90 and 90.")
    expect(problem(page, "recipient_email")).to_have_text("Must be an address like name@example.com.")
    expect(problem(page, "window_to")).to_have_text("Must be later than the window's start.")
    for name in ("destination_point", "recipient_email", "window_to"):
        expect(page.locator(f"#{name}")).to_have_attribute("aria-invalid", "true")
        # beside its field: in the same field box, right under the input
        assert page.locator(f"#field-{name}").locator(f"#{name}-problem").count() == 1
    expect(problem(page, "pickup_point")).to_have_count(0)
    for name, value in typed.items():
        expect(page.locator(f"#{name}")).to_have_value(value)
    assert parcel_ids(data) == before  # nothing was created
    screenshot(page, "parcel-form-problems-desktop.png")

    page.locator("#form-problems").get_by_role("link", name="Destination point").click()
    expect(page.locator("#destination_point")).to_be_focused()
    page.locator("#destination_point").fill("28.5535, 77.1926")
    page.locator("#recipient_email").fill("Asha.Rao@Example.test")
    page.locator("#window_to").fill("2026-01-08T16:30")
    page.get_by_role("button", name="Create parcel").click()
    notice = page.locator("#created-notice")
    expect(notice).to_contain_text(f"was created for Kiran Kumar ({people['client']['email']}), to Hauz Khas Village")
    expect(page.locator("#form-problems")).to_have_count(0)
    expect(page.locator("#client_email")).to_have_value("")  # a fresh form for the next one
    made = (parcel_ids(data) - before).pop()
    parcel = data.call("GET", f"/api/parcels/{made}/")
    assert parcel["owner_id"] == people["client"]["id"] and parcel["status"] == "pending"
    assert parcel["pickup"] == {"lat": 28.6315, "lng": 77.2167, "address": "Connaught Place, New Delhi"}
    assert parcel["destination"] == {"lat": 28.5535, "lng": 77.1926, "address": "Hauz Khas Village, New Delhi"}
    assert parcel["recipient"] == {"name": "Asha Rao", "email": "asha.rao@example.test", "phone": "+91 98100 12345"}
    assert parcel["note"] == "Blue gate, ring twice."
    assert parcel["window"] == {"from": "2026-01-08T08:30:00.000Z", "to": "2026-01-08T11:00:00.000Z"}
    screenshot(page, "parcel-form-created-desktop.png")
    notice.get_by_role("link", name="Open its live map").click()
    expect(page).to_have_url(re.compile(rf"/parcels/{made}/track$"))
    assert session.script_errors() == []


def test_a_click_on_the_map_sets_the_point_of_the_field_in_focus(sessions, data):
    session = sessions(data.admin_email)
    page = session.page
    page.goto("/dispatch/parcels/new")
    map_area = page.locator("#intake-map")
    expect(map_area).to_be_visible()
    page.locator("#pickup_point").fill("28.6139, 77.2090")  # a typed point is drawn, and the map goes there
    page.locator("#pickup_point").press("Tab")
    pickup = page.locator(".marker-pickup")
    expect(pickup).to_have_attribute("data-lat", "28.6139")

    page.locator("#destination_address").focus()  # the field in focus says which point the map sets
    expect(page.get_by_role("radio", name="Destination")).to_be_checked()
    expect(page.locator("#map-help")).to_have_text("Click or tap the map to set the destination point.")
    box = map_area.bounding_box()
    map_area.click(position={"x": box["width"] * 0.7, "y": box["height"] * 0.3})
    value = page.locator("#destination_point").input_value()
    found = re.fullmatch(r"(-?\d+\.\d{6}), (-?\d+\.\d{6})", value)
    assert found, value
    destination = page.locator(".marker-destination")
    expect(destination).to_have_attribute("data-lat", str(float(found[1])))
    # north-east of the pickup, which is at the map's centre
    assert float(found[1]) > 28.6139 and float(found[2]) > 77.2090
    expect(pickup).to_have_attribute("data-lat", "28.6139")  # the other point stays

    page.locator("#pickup_point").focus()
    expect(page.get_by_role("radio", name="Pickup")).to_be_checked()
    map_area.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.7})
    moved = page.locator("#pickup_point").input_value()
    lat, lng = (float(v) for v in moved.split(", "))
    assert lat < 28.6139 and lng < 77.2090, moved
    expect(pickup).to_have_attribute("data-lat", str(lat))
    assert page.locator("#destination_point").input_value() == value
    expect(page.locator("#map-help")).to_have_text("Pickup point set.")
    screenshot(page, "parcel-form-map-desktop.png")
    assert session.script_errors() == []


def test_the_form_on_a_phone_picks_both_points_with_two_taps(sessions, data, people):
    session = sessions(data.admin_email, phone=True)
    page = session.page
    page.goto("/dispatch/parcels/new")
    page.locator("#client_email").fill(people["client"]["email"])
    map_area = page.locator("#intake-map")
    map_area.scroll_into_view_if_needed()
    box = map_area.bounding_box()
    map_area.tap(position={"x": box["width"] * 0.4, "y": box["height"] * 0.5})
    expect(page.locator("#pickup_point")).to_have_value(re.compile(r"^-?\d+\.\d{6}, -?\d+\.\d{6}$"))
    expect(page.get_by_role("radio", name="Destination")).to_be_checked()  # the pickup set, on to the destination
    map_area.tap(position={"x": box["width"] * 0.6, "y": box["height"] * 0.5})
    expect(page.locator("#destination_point")).to_have_value(re.compile(r"^-?\d+\.\d{6}, -?\d+\.\d{6}$"))
    assert page.locator("#pickup_point").input_value() != page.locator("#destination_point").input_value()
    screenshot(page, "parcel-form-map-phone.png")
    page.goto("/dispatch/parcels/new")
    page.get_by_role("button", name="Create parcel").click()
    expect(problem(page, "client_email")).to_be_visible()
    page.locator("#form-problems").scroll_into_view_if_needed()
    screenshot(page, "parcel-form-problems-phone.png")
    assert session.script_errors() == []


def test_the_form_and_the_import_work_without_javascript(browser, server, data, people, tmp_path):
    context = browser.new_context(base_url=server.url, viewport=DESKTOP, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto("/login")
        page.get_by_label("Email").fill(data.admin_email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.goto("/dispatch/parcels/new")
        expect(page.locator("#map-card")).to_be_hidden()  # the map needs JavaScript; typing does not
        expect(page.locator("#tz-hint")).to_have_text("Times are in UTC.")
        page.locator("#client_email").fill(people["client"]["email"])
        page.locator("#pickup_point").fill("28.6, 77.2")
        page.locator("#destination_point").fill("28.5 77.1")
        page.locator("#window_from").fill("2026-01-08T14:00")
        page.locator("#window_to").fill("2026-01-08T15:00")
        before = parcel_ids(data)
        page.get_by_role("button", name="Create parcel").click()
        expect(page.locator("#created-notice")).to_be_visible()
        made = data.call("GET", f"/api/parcels/{(parcel_ids(data) - before).pop()}/")
        assert made["window"] == {"from": "2026-01-08T14:00:00.000Z", "to": "2026-01-08T15:00:00.000Z"}
        assert made["destination"] == {"lat": 28.5, "lng": 77.1, "address": ""}

        client = people["client"]["email"]
        good = write_csv(tmp_path, "two.csv", [[client, "28.6", "77.2", "A", "28.5", "77.1", "B", "", "", ""]] * 2)
        page.goto("/dispatch/import")
        page.locator("#file").set_input_files(good)
        page.get_by_role("button", name="Check the file").click()
        expect(page.locator("#import-ready")).to_contain_text("Every row is ready: 2 parcels")
        before = parcel_ids(data)
        page.get_by_role("button", name="Import 2 parcels").click()
        expect(page.locator("#import-result")).to_contain_text("2 parcels imported")
        assert len(parcel_ids(data) - before) == 2
    finally:
        context.close()


def test_an_import_shows_each_problem_by_its_line_then_a_good_file_imports(sessions, data, people, tmp_path):
    client, driver = people["client"]["email"], people["driver"]["email"]
    bad = write_csv(tmp_path, "monday.csv", [
        [client, "28.6315", "77.2167", "Connaught Place", "28.5535", "77.1926", "Hauz Khas", "Asha", "", driver],
        ["nobody@example.test", "28.6315", "77.2167", "Connaught Place", "28.5", "77.1", "Saket", "", "", ""],
        [client, "28.6315", "77.2167", "Connaught Place", "north", "77.2", "Lajpat Nagar", "", "", ""],
        [client, "28.6315", "77.2167", "Connaught Place", "28.57", "77.24", "Lajpat Nagar", "Meera", "Fragile", ""],
    ])
    session = sessions(data.admin_email)
    page = session.page
    page.goto("/dispatch")
    screenshot(page, "dispatch-intake-links-desktop.png")
    page.get_by_role("link", name="Import CSV").click()
    expect(page).to_have_url(re.compile(r"/dispatch/import$"))
    before = parcel_ids(data)
    page.locator("#file").set_input_files(bad)  # choosing the file checks it
    expect(page.locator("#import-summary")).to_have_text(
        "2 of the file's 4 rows have problems; nothing was imported. Fix the rows marked below in the file, "
        "then choose it again.")
    expect(page.locator("#preview-title")).to_have_text("monday.csv: 4 rows")
    expect(page.locator("#line-3 .row-problem")).to_have_text(
        "client_email must be the e-mail of a client (nobody has this one)")
    expect(page.locator("#line-4 .row-problem")).to_have_text("destination_lat must be a number, like 28.6139")
    for line in (2, 5):
        expect(page.locator(f"#line-{line} .row-ok")).to_have_text("Ready")
    expect(page.locator("#line-4")).to_contain_text("Lajpat Nagar")
    expect(page.get_by_role("button", name=re.compile("^Import"))).to_have_count(0)
    assert parcel_ids(data) == before
    screenshot(page, "import-problems-desktop.png")

    good = write_csv(tmp_path, "monday-fixed.csv", [
        [client, "28.6315", "77.2167", "Connaught Place", "28.5535", "77.1926", "Hauz Khas", "Asha", "", driver],
        [client, "28.6315", "77.2167", "Connaught Place", "28.5", "77.1", "Saket", "", "", driver],
        [client, "28.6315", "77.2167", "Connaught Place", "28.57", "77.24", "Lajpat Nagar", "Meera", "Fragile", ""],
    ])
    page.locator("#file").set_input_files(good)
    expect(page.locator("#import-ready")).to_have_text(
        "Every row is ready: 3 parcels, 2 of them assigned to a driver.")
    assert parcel_ids(data) == before  # seen, not yet imported
    screenshot(page, "import-ready-desktop.png")
    page.get_by_role("button", name="Import 3 parcels").click()
    result = page.locator("#import-result")
    expect(result).to_contain_text("3 parcels imported")
    expect(result).to_contain_text("2 of them assigned to drivers")
    made = sorted(parcel_ids(data) - before)
    assert len(made) == 3
    expect(result).to_contain_text(f"(#{made[0]} to #{made[-1]})")
    shown = [data.call("GET", f"/api/parcels/{i}/") for i in made]
    assert [p["destination"]["address"] for p in shown] == ["Hauz Khas", "Saket", "Lajpat Nagar"]
    assert [p["status"] for p in shown] == ["assigned", "assigned", "pending"]
    assert shown[2]["recipient"] == {"name": "Meera", "email": None, "phone": None} and shown[2]["note"] == "Fragile"
    screenshot(page, "import-done-desktop.png")
    result.get_by_role("link", name="See them on All parcels").click()
    expect(page).to_have_url(re.compile(r"/dispatch$"))
    expect(page.locator(f"#parcel-{made[-1]}")).to_contain_text("Lajpat Nagar")
    assert session.script_errors() == []


def test_the_import_on_a_phone(sessions, data, people, tmp_path):
    client = people["client"]["email"]
    session = sessions(data.admin_email, phone=True)
    page = session.page
    page.goto("/dispatch")
    expect(page.get_by_role("link", name="New parcel")).to_be_visible()
    screenshot(page, "dispatch-intake-links-phone.png")
    page.get_by_role("link", name="Import CSV").click()
    expect(page).to_have_url(re.compile(r"/dispatch/import$"))
    screenshot(page, "import-choose-phone.png")
    page.locator("#file").set_input_files(write_csv(tmp_path, "tuesday.csv", [
        [client, "28.6315", "77.2167", "Connaught Place", "28.5535", "77.1926", "Hauz Khas", "Asha", "", ""],
        [client, "28.6315", "77.2167", "Connaught Place", "28.5", "77.1", "", "", "", "ravi@nowhere.test"],
    ]))
    expect(page.locator("#line-3 .row-problem")).to_have_text(
        "driver_email must be the e-mail of a driver (nobody has this one)")
    page.locator("#line-2").scroll_into_view_if_needed()
    screenshot(page, "import-problems-phone.png")
    assert session.script_errors() == []
