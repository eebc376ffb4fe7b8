"""Proof of delivery in a real browser (CONTRACT §10, docs/protocol.md "Proof of delivery"): the
driver delivers with a camera photo, a signature drawn on the pad and the receiver's name; the
share page and the track page then show them. Without a signal the proof waits on the phone
(IndexedDB), survives a reload, and arrives, then the delivery, once the phone is back online."""

from __future__ import annotations

import io
import re
import urllib.request
from typing import Any

from PIL import Image
from playwright.sync_api import Page, expect
from pymongo import MongoClient

from tests.browser.conftest import DESKTOP, PHONE, screenshot


def photo_jpeg() -> bytes:
    """A phone's photo: a parcel (brown) on a doorstep (grey), landscape."""
    image = Image.new("RGB", (2400, 1800), (150, 150, 150))
    image.paste((140, 90, 40), (800, 600, 1600, 1300))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def fetch_image(server: Any, path: str, token: str) -> Image.Image:
    request = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert "private" in response.headers["Cache-Control"]
        return Image.open(io.BytesIO(response.read()))


def open_delivery(page: Page, parcel_id: int) -> None:
    """The driver's page of the parcel, its "Delivered" dialog open."""
    page.goto(f"/driver/parcels/{parcel_id}")
    page.get_by_role("button", name="Delivered", exact=True).click()
    expect(page.get_by_role("dialog")).to_be_visible()


def fill_proof(page: Page, name: str) -> None:
    """A photo from the "camera", a signature drawn on the pad with a drag, and the receiver's name."""
    page.locator("#proof-photo-input").set_input_files(
        files=[{"name": "IMG_2041.jpg", "mimeType": "image/jpeg", "buffer": photo_jpeg()}])
    expect(page.locator("#proof-photo-preview")).to_be_visible()
    expect(page.get_by_role("button", name="Remove photo")).to_be_visible()
    pad = page.locator("#signature-pad")
    pad.scroll_into_view_if_needed()
    box = pad.bounding_box()
    page.mouse.move(box["x"] + 30, box["y"] + box["height"] * 0.7)
    page.mouse.down()
    for step in range(1, 25):  # a wave across the pad
        page.mouse.move(box["x"] + 30 + step * (box["width"] - 60) / 24,
                        box["y"] + box["height"] * (0.7 - 0.4 * (step % 2)), steps=2)
    page.mouse.up()
    expect(page.get_by_role("button", name="Clear")).to_be_enabled()
    page.get_by_label("Received by").fill("Asha Verma")


def signature_ink(image: Image.Image) -> int:
    """How many pixels of the signature are ink (opaque and dark)."""
    pixels = image.convert("RGBA").tobytes()
    return sum(1 for i in range(0, len(pixels), 4) if pixels[i + 3] > 200 and max(pixels[i:i + 3]) < 80)


def test_the_driver_delivers_with_a_proof_and_the_share_page_shows_it(sessions, data, server):
    driver_user = data.user("driver", "Proof Priya")
    owner = data.user("client", "Owner Proof")
    parcel_id = data.parcel(owner, driver_user, status="in_transit")
    link = data.call("POST", f"/api/parcels/{parcel_id}/share/")

    # The recipient watches the share page: no proof before delivery.
    recipient = sessions(phone=True)
    share = recipient.page
    share.goto(f"/t/{link['token']}")
    expect(share.locator("#parcel-status")).to_have_text("In transit")
    expect(share.locator("#proof")).to_be_hidden()

    driver = sessions(driver_user["email"], phone=True)
    page = driver.page
    open_delivery(page, parcel_id)
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    expect(page.locator("#proof-photo-input")).to_have_attribute("capture", "environment")
    expect(page.locator("#proof-photo-input")).to_have_attribute("accept", "image/*")
    screenshot(page, "proof-dialog-phone.png")
    fill_proof(page, "Asha Verma")
    screenshot(page, "proof-dialog-filled-phone.png")
    # Clear empties the pad; drawn again for real.
    page.get_by_role("button", name="Clear").click()
    expect(page.get_by_role("button", name="Clear")).to_be_disabled()
    fill_proof(page, "Asha Verma")
    dialog.get_by_role("button", name="Yes, delivered").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#parcel-status")).to_have_text("Delivered")

    # Stored: the photo re-encoded at 1600 px, the signature with its ink, the name.
    parcel = data.call("GET", f"/api/parcels/{parcel_id}/")
    proof = parcel["proof"]
    assert proof["received_by"] == "Asha Verma", proof
    assert proof["photo"] and proof["signature"], proof
    photo = fetch_image(server, proof["photo"], data.admin_token)
    assert photo.format == "JPEG" and max(photo.size) <= 1600 and photo.size[0] > photo.size[1]
    assert signature_ink(fetch_image(server, proof["signature"], data.admin_token)) > 200

    # The share page, open all along, shows it without a reload; and after one.
    expect(share.locator("#parcel-status")).to_have_text("Delivered")
    expect(share.locator("#proof")).to_be_visible()
    expect(share.locator("#proof-name")).to_have_text("Asha Verma")
    expect(share.locator("#proof-time")).to_have_text(re.compile(r"\d{1,2}[:.]\d\d"))
    for image in ("#proof-photo", "#proof-signature"):
        expect(share.locator(image)).to_have_js_property("complete", True)
        assert share.locator(image).evaluate("img => img.naturalWidth") > 0, image
    screenshot(share, "proof-share-live-phone.png")
    share.reload()
    expect(share.locator("#proof-name")).to_have_text("Asha Verma")
    assert share.locator("#proof-photo").evaluate("img => img.naturalWidth") > 0
    screenshot(share, "proof-share-phone.png")
    share.set_viewport_size(DESKTOP)
    screenshot(share, "proof-share-desktop.png")

    # The owner's track page shows it too.
    owner_session = sessions(owner["email"])
    track = owner_session.page
    track.goto(f"/parcels/{parcel_id}/track")
    expect(track.locator("#proof-name")).to_have_text("Asha Verma")
    assert track.locator("#proof-signature").evaluate("img => img.naturalWidth") > 0
    screenshot(track, "proof-track-desktop.png")
    track.set_viewport_size(PHONE)
    screenshot(track, "proof-track-phone.png")
    for session in (driver, recipient, owner_session):
        assert session.script_errors() == []


def test_a_refused_photo_is_said_in_the_dialog_which_stays_open(sessions, data):
    driver_user = data.user("driver", "Refused Rita")
    parcel_id = data.parcel(data.user("client", "Owner R"), driver_user, status="in_transit")
    driver = sessions(driver_user["email"])
    page = driver.page
    open_delivery(page, parcel_id)
    page.locator("#proof-photo-input").set_input_files(
        files=[{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": b"not a photo at all\n" * 50}])
    expect(page.get_by_role("button", name="Remove photo")).to_be_visible()
    page.get_by_role("dialog").get_by_role("button", name="Yes, delivered").click()
    expect(page.locator("#proof-problem")).to_have_text("The photo is not a JPEG, PNG or WebP image.")
    expect(page.locator("#proof-photo-state")).to_have_text("photo.jpg")
    expect(page.get_by_role("dialog")).to_be_visible()
    screenshot(page, "proof-dialog-refused-desktop.png")
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    assert data.call("GET", f"/api/parcels/{parcel_id}/")["status"] == "in_transit"
    assert driver.script_errors() == []


def test_without_a_signal_the_proof_waits_on_the_phone_and_arrives_when_back_online(sessions, data, server,
                                                                                    db_server):
    driver_user = data.user("driver", "Offline Omar")
    parcel_id = data.parcel(data.user("client", "Owner O"), driver_user, status="in_transit")
    files = MongoClient(db_server)[server.env["MONGODB_DB"]]["proofs.files"]
    stored_before = files.count_documents({})
    driver = sessions(driver_user["email"], phone=True)
    page = driver.page
    open_delivery(page, parcel_id)
    fill_proof(page, "Asha Verma")

    driver.context.set_offline(True)
    page.get_by_role("dialog").get_by_role("button", name="Yes, delivered").click()
    expect(page.get_by_role("dialog")).to_be_hidden()
    banner = page.locator("#proof-outbox")
    expect(banner).to_have_text(re.compile(rf"^No signal: the delivery of parcel #{parcel_id} and its proof are kept"))
    screenshot(page, "proof-waiting-phone.png")
    kept = page.evaluate("""() => new Promise((resolve, reject) => {
        const req = indexedDB.open("parcel-tracking");
        req.onsuccess = () => {
          const all = req.result.transaction("proofs").objectStore("proofs").getAll();
          all.onsuccess = () => resolve(all.result.map((e) => ({
            parcel: e.parcelId, name: e.receivedBy, photo: e.photo instanceof Blob && e.photo.size,
            signature: e.signature instanceof Blob && e.signature.size})));
        };
        req.onerror = () => reject(req.error);
    })""")
    assert len(kept) == 1 and kept[0]["parcel"] == parcel_id and kept[0]["name"] == "Asha Verma", kept
    assert kept[0]["photo"] > 1000 and kept[0]["signature"] > 100, kept
    assert data.call("GET", f"/api/parcels/{parcel_id}/")["status"] == "in_transit"
    assert files.count_documents({}) == stored_before

    # The signal comes back, but the proof cannot get through yet: a reload keeps it waiting.
    page.route(re.compile(r".*/api/parcels/\d+/proof/$"), lambda route: route.abort())
    driver.context.set_offline(False)
    page.reload()
    expect(banner).to_have_text(re.compile(rf"parcel #{parcel_id} and its proof are kept"))
    assert data.call("GET", f"/api/parcels/{parcel_id}/")["status"] == "in_transit"

    # Through at last: the proof arrives, then the delivery.
    page.unroute(re.compile(r".*/api/parcels/\d+/proof/$"))
    driver.context.set_offline(True)
    driver.context.set_offline(False)  # the `online` event
    expect(banner).to_be_hidden()
    expect(page.locator("#toasts")).to_contain_text(f"parcel #{parcel_id} is delivered, with its proof")
    parcel = data.call("GET", f"/api/parcels/{parcel_id}/")
    assert parcel["status"] == "delivered" and parcel["proof"]["received_by"] == "Asha Verma", parcel
    assert parcel["proof"]["photo"] and parcel["proof"]["signature"], parcel
    assert files.count_documents({}) == stored_before + 2
    assert driver.script_errors() == []
