"""The people page (/dispatch/people) in a real browser: adding a driver (a wrong field first,
what was typed kept), finding them, deactivating them while they drive (asked first; their
page's socket closes and they are logged out), and activating them again; on a phone, and
without JavaScript."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD, pill, screenshot, start_shift


def person_row(page: Page, email: str):
    return page.locator(".people-table tbody tr", has_text=email)


def test_a_dispatcher_adds_a_driver_finds_them_deactivates_them_while_they_drive_and_activates_them(sessions, data):
    client = data.user("client", "Kiran Client")
    other = data.user("driver", "Vikram Driver")
    boss = data.user("dispatcher", "Priya Dispatcher")
    desk = sessions(boss["email"])
    page = desk.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="People").click()
    expect(page).to_have_url(re.compile(r"/dispatch/people$"))
    expect(page.get_by_role("link", name="People")).to_have_attribute("aria-current", "page")

    add = page.locator(".people-add")
    email = f"nia-{uuid.uuid4().hex[:6]}@example.test"
    add.get_by_label("Name").fill("Nia Driver")
    add.get_by_label("E-mail").fill(other["email"])  # someone has it already
    add.get_by_label("Role").select_option("driver")
    add.get_by_label("Password").fill(PASSWORD)
    add.get_by_role("button", name="Add this person").click()
    expect(page.locator("#new-email-error")).to_have_text("A user with that email exists already.")
    expect(add.get_by_label("E-mail")).to_be_focused()
    expect(add.get_by_label("Name")).to_have_value("Nia Driver")
    expect(add.get_by_label("E-mail")).to_have_value(other["email"])
    expect(add.get_by_label("Role")).to_have_value("driver")
    expect(add.get_by_label("Password")).to_have_value("")  # never sent back
    expect(page.locator("#new-password-help")).to_contain_text("type it once more")
    screenshot(page, "people-form-error-desktop.png")

    add.get_by_label("E-mail").fill(email)
    add.get_by_label("Password").fill(PASSWORD)
    add.get_by_role("button", name="Add this person").click()
    expect(page.locator("#people-notice")).to_have_text(f"Added Nia Driver ({email}) as a driver. They can log in now.")
    expect(page.get_by_role("link", name="Drivers")).to_have_attribute("aria-current", "page")
    row = person_row(page, email)
    expect(row).to_contain_text("Active")

    page.get_by_label("Find").fill("NIA")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"/dispatch/people\?role=driver&q=NIA$"))
    expect(page.locator(".people-table tbody tr")).to_have_count(1)
    expect(row).to_contain_text("Nia Driver")
    page.get_by_label("Find").fill("vikram dri")
    page.get_by_role("button", name="Search").click()
    expect(page.locator(".people-table tbody tr")).to_have_count(1)
    expect(person_row(page, other["email"])).to_be_visible()
    page.get_by_label("Find").fill("nia")
    page.get_by_role("button", name="Search").click()

    nia = int(row.get_attribute("id").removeprefix("person-"))
    data.parcel(client, {"id": nia}, status="assigned")
    driver = start_shift(sessions, email)  # logs in with the password the dispatcher typed

    label = f"Nia Driver ({email})"
    row.get_by_role("button", name=f"Deactivate {label}").click()
    dialog = page.locator("#deactivate-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#deactivate-person")).to_have_text("Nia Driver")
    expect(page.locator("#deactivate-email")).to_have_text(email)
    expect(page.locator("#deactivate-cancel")).to_be_focused()
    screenshot(page, "people-deactivate-dialog-desktop.png")
    page.keyboard.press("Escape")  # cancelling sends nothing
    expect(dialog).to_be_hidden()
    expect(row).to_contain_text("Active")
    expect(pill(driver.page)).to_have_text("Live")

    row.get_by_role("button", name=f"Deactivate {label}").click()
    page.locator("#deactivate-ok").click()
    expect(page.locator("#people-notice")).to_have_text(f"{label} is deactivated and was logged out everywhere.")
    expect(page).to_have_url(re.compile(rf"/dispatch/people\?role=driver&q=nia&changed={nia}#person-{nia}$"))
    expect(row).to_contain_text("Deactivated")
    # Their page's socket is closed (4401), its new token refused: to the login page.
    expect(driver.page).to_have_url(re.compile(r"/login\?next=%2Fdriver"))
    driver.login(email)
    expect(driver.page.get_by_role("alert")).to_have_text("this account is deactivated")
    screenshot(page, "people-desktop.png")

    row.get_by_role("button", name=f"Activate {label}").click()
    expect(page.locator("#people-notice")).to_have_text(f"{label} is active again and can log in.")
    expect(row).to_contain_text("Active")
    driver.login(email)
    expect(driver.page).to_have_url(re.compile(r"/driver$"))
    assert desk.script_errors() == [] and driver.script_errors() == []


def test_on_a_phone_the_list_is_cards_and_deactivating_asks_in_a_dialog(sessions, data):
    boss = data.user("dispatcher", "Dev Dispatcher")
    for name in ("Asha Rao", "Bilal Khan", "Chitra Iyer"):
        data.user("driver", name)
    phone = sessions(boss["email"], phone=True)
    page = phone.page
    page.goto("/dispatch/people?role=driver")
    expect(page.get_by_role("link", name="Add a person")).to_be_visible()  # the form is below the list
    assert page.locator(".people-table thead").bounding_box()["height"] <= 1  # cards, not columns
    row = page.locator(".people-table tbody tr").first
    expect(row).to_contain_text("Chitra Iyer")
    box = row.get_by_role("button", name=re.compile("^Deactivate")).bounding_box()
    assert box["height"] >= 44 and box["x"] + box["width"] <= 390  # a touch target, on the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    screenshot(page, "people-phone.png")
    row.get_by_role("button", name=re.compile("^Deactivate")).click()
    expect(page.locator("#deactivate-dialog")).to_be_visible()
    screenshot(page, "people-deactivate-dialog-phone.png")
    page.locator("#deactivate-cancel").click()
    expect(row).to_contain_text("Active")
    page.get_by_role("link", name="Add a person").click()
    expect(page.get_by_role("heading", name="Add a person")).to_be_in_viewport()
    screenshot(page, "people-add-phone.png")
    assert phone.script_errors() == []


def test_without_javascript_deactivating_asks_on_a_page_of_its_own(browser, server, data):
    boss = data.user("dispatcher", "Nora Dispatcher")
    driver = data.user("driver", "Omar Driver")
    context = browser.new_context(base_url=server.url, java_script_enabled=False, viewport={"width": 1280,
                                                                                              "height": 800})
    try:
        page = context.new_page()
        page.goto("/login")
        page.get_by_label("Email").fill(boss["email"])
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.goto("/dispatch/people?q=omar")
        label = f"Omar Driver ({driver['email']})"
        page.get_by_role("button", name=f"Deactivate {label}").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Deactivate Omar Driver?")
        screenshot(page, "people-confirm-page-desktop.png")
        page.get_by_role("link", name="Cancel").click()
        expect(person_row(page, driver["email"])).to_contain_text("Active")  # nothing changed
        page.get_by_role("button", name=f"Deactivate {label}").click()
        page.get_by_role("button", name="Yes, deactivate").click()
        expect(page).to_have_url(re.compile(r"/dispatch/people\?q=omar&changed="))
        expect(person_row(page, driver["email"])).to_contain_text("Deactivated")
    finally:
        context.close()
