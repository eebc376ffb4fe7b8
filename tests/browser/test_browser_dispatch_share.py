"""A dispatcher makes, copies and revokes a parcel's share link from its /dispatch row
(CONTRACT §7, "Share links"), and the link opens in a browser with no login."""

from __future__ import annotations

import pytest
from playwright.sync_api import Locator, expect

from tests.browser.conftest import screenshot

SHOTS = {"desktop": {"width": 1280, "height": 800}, "laptop": {"width": 1366, "height": 768}}

# Whether an element is drawn whole: inside the viewport, inside every ancestor that clips
# (a scrolling table wrapper), and its own text not running past its box.
WHOLLY_VISIBLE = """el => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) return "not drawn";
    const within = (box) => r.left >= box.left - 0.5 && r.top >= box.top - 0.5
        && r.right <= box.right + 0.5 && r.bottom <= box.bottom + 0.5;
    if (!within({left: 0, top: 0, right: innerWidth, bottom: innerHeight})) return "outside the viewport";
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
        const style = getComputedStyle(a);
        if ((style.overflowX !== "visible" || style.overflowY !== "visible") && !within(a.getBoundingClientRect())) {
            return "clipped by " + a.className;
        }
    }
    if (el.scrollWidth > el.clientWidth + 1) return "its text overflows";
    return "";
}"""


def wholly_visible(locator: Locator) -> str:
    """"" when the element is wholly visible, else why not."""
    return locator.evaluate(WHOLLY_VISIBLE)


@pytest.fixture
def parcel(data):
    client = data.user("client", "Sana Shared")
    return data.parcel(client, data.user("driver", "Ravi Road"), status="in_transit",
                       pickup="Connaught Place, New Delhi", destination="Lajpat Nagar, New Delhi")


def test_a_dispatch_row_makes_copies_and_revokes_a_share_link(sessions, data, parcel):
    dispatcher = sessions(data.admin_email)
    dispatcher.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = dispatcher.page
    page.goto(f"/dispatch?q={parcel}")
    page.get_by_role("button", name=f"Share link of parcel #{parcel}").click()
    row = page.locator(f"#share-{parcel}")  # the controls' own row, under the parcel's
    row.get_by_role("button", name=f"Create a share link of parcel #{parcel}").click()
    link = row.get_by_label(f"Share link of parcel #{parcel}")
    expect(row.locator("[data-share=message]")).to_contain_text("Anyone with this link can watch this parcel")
    url = link.input_value()
    assert "/t/" in url
    row.get_by_role("button", name="Copy").click()
    expect(row.locator("[data-share=message]")).to_have_text("Link copied.")
    assert page.evaluate("navigator.clipboard.readText()") == url

    stranger = sessions()  # a fresh browser: no login, no cookie
    stranger.page.goto(url)
    expect(stranger.page.locator("#parcel-status")).to_have_text("In transit")
    expect(stranger.page.get_by_text("Connaught Place, New Delhi")).to_be_visible()

    row.get_by_role("button", name=f"Revoke the share links of parcel #{parcel}").click()
    expect(row.locator("[data-share=message]")).to_have_text("Every share link of this parcel has stopped working.")
    expect(stranger.page.get_by_text("This link is no longer valid.")).to_be_visible()
    assert stranger.page.goto(url).status == 404
    assert dispatcher.script_errors() == []


@pytest.mark.parametrize("size", SHOTS)
def test_an_open_share_link_leaves_the_row_readable_and_copy_and_expiry_visible(sessions, data, size):
    """Issue 17: the controls open in a row of their own below the parcel's, spanning the
    table, so the Parcel and Owner columns stay put and Copy and the expiry fit."""
    client = data.user("client", "Sana Shared-Longname")
    parcel = data.parcel(client, status="pending", pickup="Connaught Place, Block A, New Delhi",
                         destination="Lajpat Nagar Central Market, New Delhi")
    dispatcher = sessions(data.admin_email)
    dispatcher.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = dispatcher.page
    page.set_viewport_size(SHOTS[size])
    page.goto("/dispatch")
    row = page.locator(f"#parcel-{parcel}")
    page.get_by_role("button", name=f"Share link of parcel #{parcel}").click()
    page.get_by_role("button", name=f"Create a share link of parcel #{parcel}").click()
    message = page.locator(f"#share-{parcel} [data-share=message]")
    expect(message).to_contain_text("Anyone with this link can watch this parcel until")
    copy = page.get_by_role("button", name=f"Copy the share link of parcel #{parcel}")
    message.scroll_into_view_if_needed()
    for name, element in (("Parcel", row.locator("th")), ("Owner", row.locator("td").first),
                          ("Copy", copy), ("the expiry", message)):
        assert wholly_visible(element) == "", name
    expect(row.locator("td").first).to_contain_text("Sana Shared-Longname")
    screenshot(page, f"dispatch-share-open-{SHOTS[size]['width']}.png")

    copy.click()
    expect(message).to_have_text("Link copied.")
    assert page.evaluate("navigator.clipboard.readText()") == page.get_by_label(
        f"Share link of parcel #{parcel}").input_value()
    assert dispatcher.script_errors() == []
