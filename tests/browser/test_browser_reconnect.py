"""The server goes away and comes back on the same port: pages reconnect by themselves, without a reload."""

from __future__ import annotations

import re

from playwright.sync_api import expect


def test_pages_reconnect_after_a_server_restart(server, data, sessions):
    client_user = data.user("client", "Rita Restart")
    driver_user = data.user("driver", "Raj Restart")
    parcel_id = data.parcel(client_user, driver_user, status="in_transit")

    client = sessions(client_user["email"])
    page = client.page
    page.goto(f"/parcels/{parcel_id}/track")
    pill = page.locator("#connection-text")
    expect(pill).to_have_text("Live")
    driver = sessions(driver_user["email"], phone=True, geolocation={"latitude": 28.6, "longitude": 77.2})
    driver.page.goto(f"/driver/parcels/{parcel_id}")
    driver.page.get_by_role("button", name=re.compile("^Tracking")).click()
    truck = page.locator(".marker-driver")
    expect(truck).to_have_attribute("data-lat", "28.6", timeout=13_000)  # a send (every 5 s), then the glide
    page.evaluate("() => { window.__sameDocument = true; }")

    server.stop()
    expect(pill).to_have_text(re.compile("^(Offline|Connecting)$"))
    expect(page.locator("#toasts")).to_contain_text("Connection lost")
    expect(driver.page.locator("#connection-text")).to_have_text(re.compile("^(Offline|Connecting)$"))
    expect(driver.page.locator("#tracking-state")).to_have_text("On")  # tracking stays on through the outage

    server.start()
    expect(pill).to_have_text("Live", timeout=20_000)
    expect(page.locator("#toasts")).to_contain_text("Reconnected")
    assert page.evaluate("() => window.__sameDocument") is True  # no reload
    expect(driver.page.locator("#connection-text")).to_have_text("Live", timeout=20_000)
    driver.context.set_geolocation({"latitude": 28.601, "longitude": 77.199})  # a drivable step
    expect(truck).to_have_attribute("data-lat", "28.601", timeout=13_000)
    assert client.script_errors() == [] and driver.script_errors() == []
