"""Proofs of delivery (docs/protocol.md, "Proof of delivery"): a photo, a signature and who
received the parcel, recorded by its driver while taking it to the destination.

The files live in GridFS (the `proofs` bucket, `Database.proofs`), in the same database and
backups as the parcels. Nothing is stored as it came: a photo is decoded and encoded again as
a JPEG of at most PHOTO_MAX_SIDE px on its longest side, upright, without metadata (a phone's
EXIF holds the GPS position of the recipient's door); a signature must be a PNG and is encoded
again as one (no text chunks, nothing appended). Decoding runs in a small pool of threads,
never on the IOLoop, and the pixels an image declares are counted before it is decoded.

A proof waits in its parcel as `pending_proof` until the parcel is delivered, when
`models.parcels.set_status` moves it into `proof`; until then a new one replaces it, and the
files of the one replaced are deleted once the new one is written.
"""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from gridfs.errors import NoFile
from PIL import Image, ImageOps

from models import parcels  # (as a module: models.parcels imports this one for its `public`)
from models.db import Database, iso, off_the_clock, utcnow

MiB = 1024 * 1024
PHOTO_MAX_BYTES = 8 * MiB
SIGNATURE_MAX_BYTES = 1 * MiB
RECEIVED_BY_MAX = 100  # characters
PHOTO_MAX_SIDE = 1600  # px, the longest side of a stored photo
PHOTO_QUALITY = 82  # JPEG quality of a stored photo: a door and a parcel stay sharp
# Pixels an image may declare: a 50 MP phone camera's full resolution (a JPEG that large is
# decoded at a fraction of it, see _photo); a signature drawn on a screen is far smaller.
PHOTO_MAX_PIXELS = 50_000_000
SIGNATURE_MAX_PIXELS = 4_000_000
MULTIPART_ALLOWANCE = 64 * 1024  # the parts' headers, `received_by` and the XSRF field
MAX_BODY = PHOTO_MAX_BYTES + SIGNATURE_MAX_BYTES + MULTIPART_ALLOWANCE
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP")
SIGNATURE_FORMATS = ("PNG",)
FORMAT_NAMES = {PHOTO_FORMATS: "a JPEG, PNG or WebP image", SIGNATURE_FORMATS: "a PNG image"}
KINDS = ("photo", "signature")
CONTENT_TYPES = {"photo": "image/jpeg", "signature": "image/png"}
NO_FIELDS = "send at least one of photo, signature and received_by"

# Pillow's own guard against decompression bombs, at our limit: past twice the limit Image.open
# raises DecompressionBombError; between the two it only warns, and `_decoded` refuses the image.
Image.MAX_IMAGE_PIXELS = PHOTO_MAX_PIXELS

# Two images decoded at once at most: a decoded photo takes up to 200 MB, and the machine's
# cores serve the live path too.
_DECODER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="proof-image")


class ProofRefused(ValueError):
    """A proof that cannot be recorded: `status` (400, 403, 409, 413) and why, for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Download:
    """A stored file, read chunk by chunk (GridFS keeps it in chunks of 255 KiB)."""

    content_type: str
    length: int
    etag: str
    chunks: AsyncIterator[bytes]


def limits() -> dict[str, int]:
    """The limits the driver's page checks before sending (its `data-rules`)."""
    return {"photo_max_bytes": PHOTO_MAX_BYTES, "signature_max_bytes": SIGNATURE_MAX_BYTES,
            "received_by_max": RECEIVED_BY_MAX, "photo_max_side": PHOTO_MAX_SIDE}


def files_url(parcel_id: int) -> str:
    """Where the API serves a parcel's proof files (`public`'s `base_url`)."""
    return f"/api/parcels/{parcel_id}/proof"


def link_files_url(token: str) -> str:
    """Where a share link serves its parcel's proof files."""
    return f"/t/{token}/proof"


def public(proof: Mapping[str, Any] | None, base_url: str) -> dict[str, Any] | None:
    """A proof as the API and the pages show it, its files as URLs under `base_url`
    (`<base_url>/photo`, `<base_url>/signature`)."""
    if not proof:
        return None
    return {
        "received_by": proof.get("received_by"),
        **{kind: f"{base_url}/{kind}" if proof.get(kind) is not None else None for kind in KINDS},
        "taken_at": iso(proof.get("taken_at")),
        "location": proof.get("location"),
    }


def shown(parcel: Mapping[str, Any], pending: bool) -> Mapping[str, Any] | None:
    """The proof whose files a parcel's image URLs serve: the delivered one, and before delivery,
    with `pending` (its driver, its owner, dispatchers; not a share link), the one waiting for it."""
    return parcel.get("proof") or (parcel.get("pending_proof") if pending else None)


def received_by(value: str | None) -> str | None:
    """The receiver's name as stored (spaces collapsed; None when empty); `ProofRefused` 400 past the limit."""
    name = " ".join((value or "").split())
    if len(name) > RECEIVED_BY_MAX:
        raise ProofRefused(400, f"received_by must be at most {RECEIVED_BY_MAX} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ProofRefused(400, "received_by must be a name, without control characters")
    return name or None


def position(parcel: Mapping[str, Any], live: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Where the parcel was last known to be: the latest good fix this process broadcast (`live`,
    a `location_update`), else its stored `last_location`."""
    if live and live.get("quality") != "low" and live.get("location"):
        return {"lat": live["location"]["lat"], "lng": live["location"]["lng"]}
    last = parcel.get("last_location")
    return {"lat": last["lat"], "lng": last["lng"]} if last else None


async def clean_photo(data: bytes) -> bytes:
    """The photo as stored (see the module's docstring); `ProofRefused` 413 or 400."""
    if len(data) > PHOTO_MAX_BYTES:
        raise ProofRefused(413, f"the photo is larger than {PHOTO_MAX_BYTES // MiB} MiB")
    return await _off_the_loop(_photo, data)


async def clean_signature(data: bytes) -> bytes:
    """The signature as stored: a PNG, encoded again; `ProofRefused` 413 or 400."""
    if len(data) > SIGNATURE_MAX_BYTES:
        raise ProofRefused(413, f"the signature is larger than {SIGNATURE_MAX_BYTES // MiB} MiB")
    return await _off_the_loop(_signature, data)


async def clean_both(photo: bytes | None, signature: bytes | None) -> tuple[bytes | None, bytes | None]:
    """The photo and the signature as stored, cleaned side by side (two decoder threads); the
    photo's refusal first when both are refused."""
    async def none() -> None:
        return None

    cleaned = await asyncio.gather(clean_photo(photo) if photo else none(),
                                   clean_signature(signature) if signature else none(), return_exceptions=True)
    for result in cleaned:
        if isinstance(result, BaseException):
            raise result
    return cleaned[0], cleaned[1]


async def _off_the_loop(work: Callable[[bytes], bytes], data: bytes) -> bytes:
    # Off the request's database deadline too: a photo waiting for a decoder is not the database being slow.
    return await off_the_clock(asyncio.get_running_loop().run_in_executor(_DECODER, work, data))


def _decoded(data: bytes, what: str, formats: tuple[str, ...], max_pixels: int) -> Image.Image:
    """The image `data` holds, opened (header read, pixels not yet decoded) if it is one of `formats`
    (by its content: a name or a declared type proves nothing) and declares at most `max_pixels`."""
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ProofRefused(400, f"the {what} declares too many pixels (at most {max_pixels:,})") from None
    except Exception:  # whatever the bytes make a decoder raise: they are not such an image
        raise ProofRefused(400, f"the {what} is not {FORMAT_NAMES[formats]}") from None
    if image.width * image.height > max_pixels:
        raise ProofRefused(400, f"the {what} declares too many pixels (at most {max_pixels:,})")
    return image


def _load(image: Image.Image, what: str) -> None:
    """Decode the pixels; a truncated or damaged file is refused (Pillow does not pad it out)."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ProofRefused(400, f"the {what} declares too many pixels") from None
    except Exception:
        raise ProofRefused(400, f"the {what} is damaged or incomplete") from None


def _photo(data: bytes) -> bytes:
    image = _decoded(data, "photo", PHOTO_FORMATS, PHOTO_MAX_PIXELS)
    longest = max(image.size)
    if image.format == "JPEG" and longest > PHOTO_MAX_SIDE:
        # Decode a large JPEG at 1/2, 1/4 or 1/8 of its size straight away (far less memory
        # and time), never below PHOTO_MAX_SIDE on its longest side.
        scale = PHOTO_MAX_SIDE / longest
        image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
    _load(image, "photo")
    upright = ImageOps.exif_transpose(image)  # the camera's orientation applied, before EXIF goes
    upright.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE), Image.Resampling.LANCZOS)
    # A new image gets the pixels and nothing else: no EXIF, XMP, ICC profile or comment.
    clean = Image.new("RGB", upright.size, "white")
    if upright.mode in ("RGBA", "LA") or (upright.mode == "P" and "transparency" in upright.info):
        rgba = upright.convert("RGBA")
        clean.paste(rgba, mask=rgba.getchannel("A"))
    else:
        clean.paste(upright.convert("RGB"))
    out = io.BytesIO()
    # Plain baseline JPEG: encoding a 1600 px photo took 28 ms progressive and optimised, 11 ms optimised,
    # 4.5 ms plain (5 % larger) on the 2-core bench machine, for a photo that is opened whole anyway.
    clean.save(out, "JPEG", quality=PHOTO_QUALITY)
    return out.getvalue()


def _signature(data: bytes) -> bytes:
    image = _decoded(data, "signature", SIGNATURE_FORMATS, SIGNATURE_MAX_PIXELS)
    _load(image, "signature")
    mode = image.mode if image.mode in ("1", "L", "LA", "RGB", "RGBA") else "RGBA"
    pixels = image if image.mode == mode else image.convert(mode)
    clean = Image.new(mode, pixels.size)
    clean.paste(pixels)
    out = io.BytesIO()
    clean.save(out, "PNG")
    return out.getvalue()


async def record(db: Database, parcel_id: int, driver_id: int, *, photo: bytes | None, signature: bytes | None,
                 received_by: str | None, location: Mapping[str, float] | None) -> dict[str, Any]:
    """Store a proof (files already cleaned) as the parcel's `pending_proof`, replacing the one
    before it; returns the proof as stored.

    The write's filter is its guard: the parcel is on its way (parcels.EN_ROUTE) with this driver, and
    its pending proof is the one just read (so the one replaced is known, and its files go).
    `ProofRefused` 403 or 409 when the guard does not hold; then the files stored here go."""
    files: dict[str, ObjectId] = {}
    try:
        for kind, data in (("photo", photo), ("signature", signature)):
            if data is not None:
                files[kind] = await _upload(db, parcel_id, kind, data)
        proof = {"received_by": received_by, "photo": files.get("photo"), "signature": files.get("signature"),
                 "taken_at": utcnow(), "location": dict(location) if location else None}
        for _ in range(5):
            before = await db.parcels.find_one({"_id": parcel_id}, {"status": 1, "driver_id": 1, "pending_proof": 1})
            _check(before, driver_id)
            replaced = before.get("pending_proof")
            result = await db.parcels.update_one(
                {"_id": parcel_id, "status": {"$in": list(parcels.EN_ROUTE)}, "driver_id": driver_id,
                 "pending_proof": replaced},
                {"$set": {"pending_proof": proof}},
            )
            if result.matched_count:
                break
        else:
            raise ProofRefused(409, "the parcel is changing right now; try again")
    except BaseException:
        await _delete(db, files.values())
        raise
    await _delete(db, [(replaced or {}).get(kind) for kind in KINDS])
    return proof


def _check(parcel: Mapping[str, Any] | None, driver_id: int) -> None:
    """`ProofRefused` unless this driver may record a proof for the parcel as it is now."""
    if parcel is None:
        raise ProofRefused(404, "no such parcel")
    if parcel.get("driver_id") != driver_id:
        raise ProofRefused(403, "only the parcel's assigned driver can record its proof of delivery")
    if parcel["status"] not in parcels.EN_ROUTE:
        raise ProofRefused(409, refusal(parcel["status"]))


def refusal(status: str) -> str:
    """Why a parcel in `status` takes no proof (409)."""
    if status == "delivered":
        return "the parcel is delivered; its proof of delivery can no longer change"
    return f"a parcel that is {status} takes no proof of delivery: it must be picked up or in transit"


async def _upload(db: Database, parcel_id: int, kind: str, data: bytes) -> ObjectId:
    file_id = ObjectId()
    stream = db.proofs.open_upload_stream_with_id(
        file_id, f"parcel-{parcel_id}-{kind}",
        metadata={"parcel_id": parcel_id, "kind": kind, "contentType": CONTENT_TYPES[kind]})
    # GridFS checks its indexes before each upload with `find_one({})` on both collections: an
    # empty filter, which the embedded server answers by a scan (180 ms at 20,000 files). Its
    # indexes are made with the others (Database._create_indexes), so the check is skipped.
    if "_ensured_index" in vars(stream):
        object.__setattr__(stream, "_ensured_index", True)
    async with stream:
        await stream.write(data)
    return file_id


async def _delete(db: Database, file_ids: Iterable[ObjectId | None]) -> None:
    for file_id in file_ids:
        if file_id is None:
            continue
        try:
            await db.proofs.delete(file_id)
        except NoFile:
            pass  # gone already


async def download(db: Database, proof: Mapping[str, Any] | None, kind: str) -> Download | None:
    """A file of a proof (`kind`: photo or signature), or None when the proof has none."""
    file_id = (proof or {}).get(kind)
    if file_id is None:
        return None
    try:
        stored = await db.proofs.open_download_stream(file_id)
    except NoFile:
        return None

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await stored.readchunk():
            yield chunk

    metadata = stored.metadata or {}
    return Download(metadata.get("contentType", CONTENT_TYPES[kind]), stored.length, f'"{file_id}"', chunks())
