"""A dispatcher makes, copies and revokes a parcel's share link from its /dispatch row
(CONTRACT §7, "Share links"), and the link opens in a browser with no login."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect


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
    row = page.locator(f"#parcel-{parcel}")
    row.locator("summary", has_text="Share link").click()
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
