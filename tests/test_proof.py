"""Proof of delivery (docs/protocol.md, "Proof of delivery"), through the real server and database:
what is stored of a photo and a signature, who may send and read them, in which statuses, and
that every refusal stores nothing (the GridFS collections are compared before and after)."""

from __future__ import annotations

import html
import io
import json
import os
import struct
import uuid
import zlib
from typing import Any

import pytest
from PIL import Image, PngImagePlugin
from tornado.httpclient import HTTPResponse

from models import proofs
from tests.conftest import World, body, refused
from tests.helpers import Scene, assert_timestamp, scene, send_location

RED, BLUE = (220, 20, 20), (20, 20, 220)
GPS = {1: "N", 2: (28.0, 36.0, 50.04), 3: "E", 4: (77.0, 12.0, 32.4)}  # the recipient's door


# -- making images and requests ---------------------------------------------------------------


def jpeg(size: tuple[int, int] = (4000, 3000), orientation: int = 6, **save: Any) -> bytes:
    """A phone's photo: its left half red and its right half blue as stored, an EXIF orientation
    (6: turn it 90° clockwise to see it upright) and the GPS position where it was taken."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = GPS
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=90, **save)
    return out.getvalue()


def encoded(image: Image.Image, fmt: str, **save: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def signature_png(size: tuple[int, int] = (600, 200)) -> bytes:
    """A signature as the pad exports it (strokes on transparency), with a text chunk that must not survive."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste((17, 24, 39, 255), (50, 90, 550, 110))
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "secret-author")
    return encoded(image, "PNG", pnginfo=info)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares `width` x `height` pixels: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def multipart(fields: dict[str, str] | None = None,
              files: dict[str, tuple[str, bytes, str]] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    for name, (filename, data, ctype) in (files or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def send_proof(world: World, parcel_id: int, user: Any, *, photo: bytes | None = None,
                     signature: bytes | None = None, received_by: str | None = None) -> HTTPResponse:
    files = {}
    if photo is not None:
        files["photo"] = ("IMG_0001.jpg", photo, "image/jpeg")
    if signature is not None:
        files["signature"] = ("signature.png", signature, "image/png")
    raw, ctype = multipart({"received_by": received_by} if received_by is not None else {}, files)
    return await world.api("POST", f"/api/parcels/{parcel_id}/proof/", user, raw=raw, headers={"Content-Type": ctype})


async def stored(world: World) -> tuple[list[Any], list[Any]]:
    """The ids of every file and chunk in the proofs bucket."""
    db = world.app.db.db
    return ([d["_id"] for d in await db["proofs.files"].find({}, {"_id": 1}).to_list(None)],
            [d["_id"] for d in await db["proofs.chunks"].find({}, {"_id": 1}).to_list(None)])


async def pending(world: World, parcel_id: int) -> Any:
    return (await world.app.db.parcels.find_one({"_id": parcel_id})).get("pending_proof")


def image(response: HTTPResponse) -> Image.Image:
    assert response.code == 200, (response.code, response.body[:200])
    assert "private" in response.headers["Cache-Control"], response.headers
    return Image.open(io.BytesIO(response.body))


# -- what is stored ---------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_photo_is_stored_upright_at_most_1600_px_without_exif_and_the_signature_as_a_clean_png(world):
    s = await scene(world)
    driver_ws = await world.watch(s.parcel, s.driver)
    await send_location(driver_ws, 28.5494, 77.2001)  # at the door
    photo, signature = jpeg(), signature_png()
    assert b"PhoneMaker" in photo and Image.open(io.BytesIO(photo)).getexif().get_ifd(0x8825)  # GPS in what is sent

    response = await send_proof(world, s.id, s.driver, photo=photo, signature=signature, received_by="  Asha \n Verma ")
    assert response.code == 201, response.body
    proof = body(response)
    assert set(proof) == {"received_by", "photo", "signature", "taken_at", "location"}
    assert proof["received_by"] == "Asha Verma"
    assert proof["photo"] == f"/api/parcels/{s.id}/proof/photo"
    assert proof["signature"] == f"/api/parcels/{s.id}/proof/signature"
    assert proof["location"] == {"lat": 28.5494, "lng": 77.2001}
    assert_timestamp(proof["taken_at"])

    got = await world.api("GET", proof["photo"], s.driver)
    assert got.headers["Content-Type"] == "image/jpeg"
    shown = image(got)
    assert shown.format == "JPEG" and shown.size == (1200, 1600)  # turned upright, then 1600 px at most
    assert shown.getpixel((600, 200))[0] > 180 and shown.getpixel((600, 1400))[2] > 180  # red on top, blue below
    assert not shown.getexif() and "exif" not in shown.info and "icc_profile" not in shown.info
    assert b"Exif" not in got.body and b"PhoneMaker" not in got.body

    got = await world.api("GET", proof["signature"], s.driver)
    assert got.headers["Content-Type"] == "image/png"
    drawn = image(got)
    assert drawn.format == "PNG" and drawn.size == (600, 200) and drawn.mode == "RGBA"
    assert drawn.getpixel((300, 100)) == (17, 24, 39, 255) and drawn.getpixel((10, 10))[3] == 0
    assert b"secret-author" not in got.body and "Author" not in drawn.info


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
async def test_png_and_webp_photos_are_taken_and_a_small_one_is_not_enlarged(world, fmt):
    s = await scene(world, "picked_up")
    photo = Image.new("RGBA", (800, 600), (*RED, 255))
    photo.paste((0, 0, 0, 0), (0, 0, 400, 600))  # half transparent: stored on white
    response = await send_proof(world, s.id, s.driver, photo=encoded(photo, fmt))
    assert response.code == 201, response.body
    proof = body(response)
    assert proof["signature"] is None and proof["received_by"] is None and proof["location"] is None
    shown = image(await world.api("GET", proof["photo"], s.client))
    assert shown.format == "JPEG" and shown.size == (800, 600)
    assert min(shown.getpixel((100, 300))) > 240 and shown.getpixel((700, 300))[0] > 180


@pytest.mark.gen_test(timeout=60)
async def test_a_name_alone_is_a_proof_and_a_proof_body_may_be_nine_mib(world):
    s = await scene(world)
    response = await send_proof(world, s.id, s.driver, received_by="Ravi")
    assert response.code == 201, response.body
    assert body(response)["photo"] is None and body(response)["received_by"] == "Ravi"
    assert await stored(world) == ([], [])

    # Near the limits: a photo of almost 8 MiB and a signature of almost 1 MiB in one body.
    noise = Image.frombytes("RGB", (2400, 2400), os.urandom(2400 * 2400 * 3))
    big_photo = encoded(noise, "JPEG", quality=97)
    assert 6 * proofs.MiB < len(big_photo) < proofs.PHOTO_MAX_BYTES, len(big_photo)
    scribble = Image.frombytes("RGBA", (500, 500), os.urandom(500 * 500 * 4))
    big_signature = encoded(scribble, "PNG")
    assert 0.9 * proofs.MiB < len(big_signature) < proofs.SIGNATURE_MAX_BYTES, len(big_signature)
    response = await send_proof(world, s.id, s.driver, photo=big_photo, signature=big_signature)
    assert response.code == 201, response.body
    assert image(await world.api("GET", body(response)["photo"], s.dispatcher)).size == (1600, 1600)
    # Every other endpoint keeps its small limit.
    refused(await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, raw=b" " * (200 * 1024)), 413)


# -- refusals store nothing -------------------------------------------------------------------

GOOD_PHOTO = jpeg((1200, 900), orientation=1)
BAD_INPUT = {
    "a text file as the photo": ({"photo": b"hello, this is not an image\n" * 20}, 400, "JPEG, PNG or WebP"),
    "a GIF as the photo": ({"photo": encoded(Image.new("RGB", (50, 50)), "GIF")}, 400, "JPEG, PNG or WebP"),
    "a truncated photo": ({"photo": GOOD_PHOTO[: len(GOOD_PHOTO) // 2]}, 400, "damaged or incomplete"),
    "a bomb: 10 billion pixels declared": ({"photo": png_header_only(100_000, 100_000)}, 400, "too many pixels"),
    "a bomb: 63 million pixels declared": ({"photo": png_header_only(9000, 7000)}, 400, "too many pixels"),
    "a signature declaring 9 million pixels": ({"signature": png_header_only(3000, 3000)}, 400, "too many pixels"),
    "a good photo and a JPEG signature": ({"photo": GOOD_PHOTO, "signature": GOOD_PHOTO}, 400, "a PNG image"),
    "a good photo and a truncated signature": (
        {"photo": GOOD_PHOTO, "signature": signature_png()[:300]}, 400, "signature is damaged or incomplete"),
    "a name too long": ({"photo": GOOD_PHOTO, "received_by": "x" * 101}, 400, "at most 100 characters"),
    "none of the three": ({"received_by": "   "}, 400, "at least one of photo, signature and received_by"),
    "a photo over 8 MiB": ({"photo": GOOD_PHOTO + b"\0" * (8 * 1024 * 1024)}, 413, "larger than 8 MiB"),
    "a signature over 1 MiB": ({"photo": GOOD_PHOTO, "signature": signature_png() + b"\0" * (1024 * 1024)},
                               413, "larger than 1 MiB"),
}


@pytest.mark.gen_test(timeout=60)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # refused whether it warns or raises
@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_is_refused_with_its_reason_and_stores_nothing(world, case):
    s = await scene(world)
    assert (await send_proof(world, s.id, s.driver, received_by="First")).code == 201
    before, first = await stored(world), await pending(world, s.id)
    parts, status, reason = BAD_INPUT[case]
    response = await send_proof(world, s.id, s.driver, **parts)
    assert reason in refused(response, status, case)
    assert await stored(world) == before
    assert await pending(world, s.id) == first


@pytest.mark.gen_test(timeout=60)
async def test_bodies_that_are_not_a_proof_form_are_refused(world):
    s = await scene(world)
    url = f"/api/parcels/{s.id}/proof/"
    assert "multipart/form-data" in refused(await world.api("POST", url, s.driver, body={"received_by": "A"}), 400)
    raw, ctype = multipart({"photo": "not a file"})
    assert "photo must be a file" in refused(
        await world.api("POST", url, s.driver, raw=raw, headers={"Content-Type": ctype}), 400)
    raw, ctype = multipart({"received_by": "A"}, {"received_by": ("a.txt", b"A", "text/plain")})
    assert "once" in refused(await world.api("POST", url, s.driver, raw=raw, headers={"Content-Type": ctype}), 400)
    raw, ctype = multipart({"received_by": "A"})
    broken = raw.replace(ctype.split("=")[1].encode() + b"--", b"")  # no final boundary
    assert "malformed" in refused(await world.api("POST", url, s.driver, raw=broken, headers={"Content-Type": ctype}),
                                  400)
    too_big = b"x" * (proofs.MAX_BODY + 1)
    assert "too large" in refused(await world.api("POST", url, s.driver, raw=too_big,
                                                  headers={"Content-Type": ctype}), 413)
    assert await stored(world) == ([], []) and await pending(world, s.id) is None


@pytest.mark.gen_test(timeout=60)
async def test_only_the_assigned_driver_records_a_proof(world):
    s = await scene(world)
    other_driver, stranger = await world.user("driver"), await world.user("client")
    for who, status in ((s.client, 403), (s.dispatcher, 403), (other_driver, 404), (stranger, 404), (None, 401)):
        refused(await send_proof(world, s.id, who, photo=GOOD_PHOTO, received_by="X"), status, who)
    refused(await send_proof(world, 999_999, s.driver, photo=GOOD_PHOTO), 404)
    assert await stored(world) == ([], []) and await pending(world, s.id) is None


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(("status", "code"), [
    ("assigned", 409), ("picked_up", 201), ("in_transit", 201), ("delivered", 409), ("cancelled", 409)])
async def test_a_proof_is_taken_only_on_the_way_to_the_destination(world, status, code):
    s = await scene(world, status)
    response = await send_proof(world, s.id, s.driver, photo=GOOD_PHOTO, signature=signature_png())
    if code == 201:
        assert response.code == 201, response.body
        assert len((await stored(world))[0]) == 2
    else:
        assert status in refused(response, code)
        assert await stored(world) == ([], []) and await pending(world, s.id) is None


@pytest.mark.gen_test(timeout=60)
async def test_the_model_deletes_the_files_it_stored_when_its_guard_does_not_hold(world):
    """The handler checks first, but the parcel may change between that and the write: then the
    write's guard does not match and the files just stored go (models.proofs.record)."""
    s = await scene(world)
    other = await world.user("driver")
    photo = await proofs.clean_photo(GOOD_PHOTO)
    with pytest.raises(proofs.ProofRefused) as refusal:
        await proofs.record(world.app.db, s.id, other.id, photo=photo, signature=None, received_by=None, location=None)
    assert refusal.value.status == 403
    delivered = await scene(world, "delivered")
    with pytest.raises(proofs.ProofRefused) as refusal:
        await proofs.record(world.app.db, delivered.id, delivered.driver.id, photo=photo, signature=None,
                            received_by="A", location=None)
    assert refusal.value.status == 409
    assert await stored(world) == ([], [])


# -- replacing, delivering -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_second_proof_replaces_the_first_and_its_files_go(world):
    s = await scene(world)
    first = body(await send_proof(world, s.id, s.driver, photo=jpeg((800, 600), orientation=1),
                                  signature=signature_png(), received_by="First"))
    first_files = (await stored(world))[0]
    assert len(first_files) == 2
    second = await send_proof(world, s.id, s.driver, photo=jpeg((640, 480), orientation=1), received_by="Second")
    assert second.code == 201, second.body
    files, chunks = await stored(world)
    assert len(files) == 1 and files[0] not in first_files and len(chunks) == 1
    assert body(second)["signature"] is None and first["signature"] is not None
    assert image(await world.api("GET", f"/api/parcels/{s.id}/proof/photo", s.driver)).size == (640, 480)
    assert "no signature" in refused(await world.api("GET", f"/api/parcels/{s.id}/proof/signature", s.driver), 404)
    assert (await pending(world, s.id))["received_by"] == "Second"


@pytest.mark.gen_test(timeout=60)
async def test_delivering_keeps_the_proof_and_then_it_no_longer_changes(world):
    """Needs models.parcels.set_status to move `pending_proof` into `proof` on delivery."""
    s = await scene(world)
    sent = body(await send_proof(world, s.id, s.driver, photo=GOOD_PHOTO, signature=signature_png(),
                                 received_by="Asha"))
    parcel = body(await world.api("GET", f"/api/parcels/{s.id}/", s.client))
    assert parcel["proof"] is None  # not before delivery
    delivered = await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, body={"status": "delivered"})
    assert delivered.code == 200, delivered.body
    assert body(delivered)["proof"] == sent
    for who in (s.client, s.dispatcher, s.driver):
        assert body(await world.api("GET", f"/api/parcels/{s.id}/", who))["proof"] == sent
    doc = await world.app.db.parcels.find_one({"_id": s.id})
    assert doc["proof"]["received_by"] == "Asha" and not doc.get("pending_proof")
    files = await stored(world)
    assert "delivered" in refused(await send_proof(world, s.id, s.driver, photo=GOOD_PHOTO, received_by="Late"), 409)
    assert await stored(world) == files
    assert image(await world.api("GET", sent["photo"], s.client)).size == (1200, 900)


@pytest.mark.gen_test(timeout=60)
async def test_a_proof_taken_before_a_failed_attempt_is_not_the_next_deliverys(world):
    s = await scene(world)
    assert (await send_proof(world, s.id, s.driver, received_by="Nobody, really")).code == 201
    failed = await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, {"status": "failed", "reason": "other"})
    assert failed.code == 200, failed.body
    again = await world.api("POST", f"/api/parcels/{s.id}/assign/", s.dispatcher, {"driver_id": s.driver.id})
    assert again.code == 200
    for step in ("picked_up", "in_transit", "delivered"):
        moved = await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, {"status": step})
        assert moved.code == 200, (step, moved.body)
    assert body(moved)["proof"] is None  # delivered without one this time


# -- reading the images ------------------------------------------------------------------------


async def share_link(world: World, s: Scene) -> str:
    response = await world.api("POST", f"/api/parcels/{s.id}/share/", s.client)
    assert response.code == 201, response.body
    return body(response)["token"]


@pytest.mark.gen_test(timeout=60)
async def test_the_images_answer_the_parcels_people_and_its_share_link_and_nobody_else(world):
    s = await scene(world)
    token = await share_link(world, s)
    other_driver, stranger = await world.user("driver"), await world.user("client")
    sent = body(await send_proof(world, s.id, s.driver, photo=GOOD_PHOTO, signature=signature_png(),
                                 received_by="Asha"))

    # Before delivery: the parcel's people see the proof waiting; the link shows none yet.
    for who in (s.driver, s.client, s.dispatcher):
        assert image(await world.api("GET", sent["photo"], who)).size == (1200, 900)
    assert body(await world.api("GET", f"/t/{token}/proof")) == {"proof": None}
    refused(await world.api("GET", f"/t/{token}/proof/photo"), 404)

    assert (await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, body={"status": "delivered"})).code == 200
    for kind, ctype in (("photo", "image/jpeg"), ("signature", "image/png")):
        url = f"/api/parcels/{s.id}/proof/{kind}"
        for who in (s.driver, s.client, s.dispatcher):
            got = await world.api("GET", url, who)
            assert got.headers["Content-Type"] == ctype and image(got).format in ("JPEG", "PNG")
        for who in (other_driver, stranger):
            refused(await world.api("GET", url, who), 404, who)
        refused(await world.api("GET", url), 401)
        by_link = await world.api("GET", f"/t/{token}/proof/{kind}")
        assert by_link.headers["Content-Type"] == ctype and by_link.body == (await world.api("GET", url, s.client)).body
        image(by_link)
        # The ETag (the file's id) lets a browser keep it: asked again, nothing is sent.
        again = await world.api("GET", url, s.client, headers={"If-None-Match": by_link.headers["Etag"]})
        assert again.code == 304 and again.body == b""
    assert body(await world.api("GET", f"/t/{token}/proof")) == {"proof": {
        **sent, "photo": f"/t/{token}/proof/photo", "signature": f"/t/{token}/proof/signature"}}

    # A revoked or forged link reads nothing.
    assert (await world.api("DELETE", f"/api/parcels/{s.id}/share/", s.client)).code == 204
    for path in (f"/t/{token}/proof", f"/t/{token}/proof/photo", "/t/forged-token-forged-token/proof/photo"):
        refused(await world.api("GET", path), 404, path)


@pytest.mark.gen_test(timeout=60)
async def test_the_share_page_and_the_track_page_show_the_delivered_proof(world):
    s = await scene(world)
    token = await share_link(world, s)
    assert (await send_proof(world, s.id, s.driver, photo=GOOD_PHOTO, received_by="Asha <b>V</b>")).code == 201
    before = (await world.page(f"/t/{token}")).body.decode()
    assert "Asha" not in before and "/proof/photo" not in before  # not before delivery
    assert (await world.api("POST", f"/api/parcels/{s.id}/status/", s.driver, body={"status": "delivered"})).code == 200
    for path, who, url in ((f"/t/{token}", None, f"/t/{token}/proof/photo"),
                           (f"/parcels/{s.id}/track", s.client, f"/api/parcels/{s.id}/proof/photo")):
        page = (await world.page(path, who)).body.decode()
        assert "Received by" in page and "Asha &lt;b&gt;V&lt;/b&gt;" in page, path
        assert f'src="{url}"' in page, path
        assert "/signature" not in page.split('id="proof"')[1].split("</section>")[0], path  # none was sent
        data = json.loads(html.unescape(page.split('data-parcel="')[1].split('"')[0]))
        assert data["proof"]["photo"] == url, path
