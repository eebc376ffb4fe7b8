"""The integrations page (/dispatch/integrations) in a real browser: a key made (shown once,
copied), used by a script to create a parcel, and revoked (asked first; the script is
refused from then on); a webhook added (its secret shown once) whose receiver, a server of
the test's own on loopback, gets the signed events and whose attempts the page lists; on a
desktop and on a phone."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import standardwebhooks
from playwright.sync_api import expect

from tests.browser.conftest import screenshot

PARCEL = {"pickup": {"lat": 28.6129, "lng": 77.2295, "address": "India Gate, New Delhi"},
          "destination": {"lat": 28.5494, "lng": 77.2001, "address": "Hauz Khas, New Delhi"}}


class Receiver:
    """A shop's webhook endpoint on loopback: keeps each request's headers and body, answers 200."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Endpoint(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((dict(self.headers), raw))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/parcels"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def with_key(server: Any, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A shop's script calling the API with its key, as curl would."""
    request = urllib.request.Request(server.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_dispatcher_makes_a_key_a_script_uses_it_and_it_is_revoked(sessions, data, server):
    client = data.user("client", "Kiran Shop Client")
    desk = sessions(data.admin_email)
    page = desk.page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Integrations").click()
    expect(page).to_have_url(re.compile(r"/dispatch/integrations$"))
    expect(page.get_by_role("heading", name="Integrations", exact=True)).to_be_visible()

    form = page.locator(".integrations-form").first
    form.get_by_role("button", name="Make the key").click()  # no name yet
    expect(page.locator("#key-name-error")).to_have_text(re.compile(r"^The name is required"))
    expect(form.get_by_label("Name")).to_be_focused()
    form.get_by_label("Name").fill("Kiran's web shop")
    form.get_by_label(re.compile("parcels:read")).uncheck()
    form.get_by_label(re.compile("parcels:write")).uncheck()
    form.get_by_role("button", name="Make the key").click()
    expect(page.locator("#key-scopes-error")).to_have_text("Choose at least one of the two.")
    expect(form.get_by_label("Name")).to_have_value("Kiran's web shop")  # kept
    form.get_by_label(re.compile("parcels:read")).check()
    form.get_by_label(re.compile("parcels:write")).check()
    form.get_by_role("button", name="Make the key").click()

    shown = page.locator("#new-key")
    expect(shown).to_contain_text("shown only this once")
    key = page.locator("#new-key-value").input_value()
    assert re.fullmatch(r"pk_[0-9]+_[A-Za-z0-9_-]{43}", key), key
    desk.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy = shown.get_by_role("button", name="Copy")
    copy.click()
    expect(shown.locator("button[data-copy]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == key
    expect(page.locator("#new-key-value")).to_be_focused()  # and selected: a keyboard copy works too
    row = page.locator(".keys-table tbody tr", has_text="Kiran's web shop")
    expect(row).to_contain_text("parcels:read")
    expect(row).to_contain_text("Never")
    screenshot(page, "integrations-key-shown-desktop.png")
    assert not desk.script_errors(), desk.script_errors()

    status, parcel = with_key(server, key, "POST", "/api/parcels/", {"owner_id": client["id"], **PARCEL})
    assert status == 201 and parcel["owner_id"] == client["id"], parcel
    status, answer = with_key(server, key, "GET", "/api/users/")
    assert status == 403 and "API key" in answer["error"]

    page.goto("/dispatch/integrations")
    assert key not in page.content()  # never again
    expect(row.locator(".key-used time")).to_be_visible()  # its use, recorded off the request's path

    row.get_by_role("button", name=re.compile("^Revoke")).click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#dialog-title")).to_have_text("Revoke the key “Kiran's web shop”?")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert with_key(server, key, "GET", f"/api/parcels/{parcel['id']}/")[0] == 200  # not revoked by Cancel
    row.get_by_role("button", name=re.compile("^Revoke")).click()
    dialog.get_by_role("button", name="Yes, revoke").click()
    expect(page.locator("#integrations-notice")).to_have_text(
        "The key “Kiran's web shop” is revoked: every system using it is refused now.")
    expect(row).to_contain_text("Revoked")
    status, answer = with_key(server, key, "GET", f"/api/parcels/{parcel['id']}/")
    assert status == 401 and answer == {"error": "the API key has been revoked"}
    assert not desk.script_errors(), desk.script_errors()


def test_a_webhook_is_added_its_receiver_gets_signed_events_and_the_page_shows_the_attempts(sessions, data, server):
    client = data.user("client", "Meera Shop Client")
    receiver = Receiver()
    try:
        desk = sessions(data.admin_email)
        page = desk.page
        page.goto("/dispatch/integrations")
        form = page.locator(".integrations-form", has_text="Add a webhook")
        form.get_by_label("URL").fill("ftp://shop.example/hooks")
        form.get_by_role("button", name="Add the webhook").click()
        expect(page.locator("#hook-url-error")).to_contain_text("The URL must be an https:// URL")
        expect(form.get_by_label("URL")).to_have_value("ftp://shop.example/hooks")
        form.get_by_label("URL").fill(receiver.url)
        form.get_by_label(re.compile("parcel.arriving")).uncheck()
        form.get_by_role("button", name="Add the webhook").click()
        secret = page.locator("#new-hook-value").input_value()
        assert secret.startswith("whsec_")
        expect(page.locator("#new-hook")).to_contain_text("shown only this once")
        hook = page.locator(".hook", has_text=receiver.url)
        expect(hook).to_contain_text("A parcel is created")
        expect(hook).not_to_contain_text("Its driver is close")
        expect(hook.locator(".attempts summary")).to_have_text("Delivery attempts: none yet")
        screenshot(page, "integrations-secret-shown-desktop.png")

        parcel = data.call("POST", "/api/parcels/", {"owner_id": client["id"], **PARCEL})
        data.call("POST", f"/api/parcels/{parcel['id']}/status/", {"status": "cancelled"})
        page.goto("/dispatch/integrations")
        assert secret not in page.content()
        hook.locator(".attempts summary").click()
        rows = hook.locator(".attempts-table tbody tr")
        for _ in range(20):  # the outbox sends at once; the page shows what was recorded when it was drawn
            if rows.count() == 2:
                break
            page.wait_for_timeout(250)
            page.reload()
            hook.locator(".attempts summary").click()
        expect(rows).to_have_count(2)
        expect(rows.first).to_contain_text("200")
        expect(rows.first).to_contain_text(f"#{parcel['id']}")
        told = [standardwebhooks.Webhook(secret).verify(raw, headers) for headers, raw in receiver.got]
        assert sorted(t["type"] for t in told) == ["parcel.created", "parcel.status_changed"]
        assert {t["data"]["id"] for t in told} == {parcel["id"]}
        screenshot(page, "integrations-attempts-desktop.png")

        phone = sessions(data.admin_email, phone=True)
        phone.page.goto("/dispatch/integrations")
        screenshot(phone.page, "integrations-phone.png")
        phone_hook = phone.page.locator(".hook", has_text=receiver.url)
        phone_hook.locator(".attempts summary").click()
        expect(phone_hook.locator(".attempts-table tbody tr")).to_have_count(2)
        phone_hook.locator(".attempts summary").scroll_into_view_if_needed()
        screenshot(phone.page, "integrations-hooks-phone.png")
        phone.page.locator(".integrations-form", has_text="Make a key").get_by_label("Name").fill("Phone shop")
        phone.page.get_by_role("button", name="Make the key").click()
        expect(phone.page.locator("#new-key")).to_be_visible()
        screenshot(phone.page, "integrations-key-shown-phone.png")

        hook.get_by_role("button", name=re.compile("^Delete")).click()
        dialog = page.locator("#confirm-dialog")
        expect(dialog.locator("#dialog-title")).to_have_text(f"Delete the webhook to {receiver.url}?")
        dialog.get_by_role("button", name="Yes, delete").click()
        expect(page.locator("#integrations-notice")).to_have_text("The webhook is deleted: nothing more is sent to it.")
        expect(page.locator(".hook", has_text=receiver.url)).to_have_count(0)
        assert not desk.script_errors() and not phone.script_errors()
    finally:
        receiver.stop()
