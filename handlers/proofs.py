"""Proof of delivery over HTTP (docs/protocol.md, "Proof of delivery").

`POST /api/parcels/<id>/proof/` takes the driver's photo, signature and the receiver's name as
multipart/form-data (a body of up to models.proofs.MAX_BODY; every other API call keeps its
64 KiB). The images are read back, streamed from GridFS, under `/api/parcels/<id>/proof/photo`
(whoever may see the parcel) and `/t/<token>/proof/photo` (its share link), and the same for
`signature`; `/t/<token>/proof` is the share page's proof as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

from handlers.api import ParcelHandlerBase
from handlers.base import ApiHandler, Refused
from handlers.openapi import TEXT, Answer, described, nullable, obj, ref
from models import parcels, proofs
from models.access import can_record_proof

FIELDS = ("photo", "signature", "received_by")
FILE = Answer({"type": "string", "format": "binary"}, "The image", media=("image/jpeg", "image/png"),
              headers={"ETag": {"description": "the file's id", "schema": TEXT}})
IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False, "schema": TEXT,
                 "description": "the ETag of the copy the client has"}


class ProofFiles(ApiHandler):
    """Sends one file of a proof: its type, `Cache-Control: private` (the photo of someone's door is
    for the people of this parcel, never a shared cache), revalidated by its ETag (the file's id:
    a new proof is a new file)."""

    async def send_file(self, proof: Mapping[str, Any] | None, kind: str) -> None:
        stored = await proofs.download(self.db, proof, kind)
        if stored is None:
            raise Refused(404, f"this parcel has no {kind} in its proof of delivery")
        self.set_header("Cache-Control", "private, no-cache")
        self.set_header("Etag", stored.etag)
        if self.check_etag_header():
            self.set_status(304)
            return self.finish()
        self.set_header("Content-Type", stored.content_type)
        self.set_header("Content-Length", stored.length)
        async for chunk in stored.chunks:
            self.write(chunk)
            await self.flush()
        self.finish()


class ProofHandler(ParcelHandlerBase):
    """POST /api/parcels/<id>/proof/: the parcel's driver records its proof of delivery → 201 the proof."""

    max_body_size = proofs.MAX_BODY
    too_large = (f"the proof is too large: a photo of at most {proofs.PHOTO_MAX_BYTES // proofs.MiB} MiB and "
                 f"a signature of at most {proofs.SIGNATURE_MAX_BYTES // proofs.MiB} MiB")

    @described("Record the proof of delivery (the parcel's driver, while it is on its way)",
               body=obj({"photo": {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP"},
                         "signature": {"type": "string", "format": "binary", "description": "PNG"},
                         "received_by": {"type": "string", "maxLength": proofs.RECEIVED_BY_MAX}}),
               body_media="multipart/form-data", responses={201: ref("Proof")}, errors=(403, 404, 409))
    async def post(self, parcel_id: str) -> None:
        user, parcel = await self.caller_and_parcel(parcel_id)
        if not can_record_proof(user, parcel):
            raise Refused(403, "only the parcel's assigned driver can record its proof of delivery")
        if parcel["status"] not in parcels.EN_ROUTE:
            raise Refused(409, proofs.refusal(parcel["status"]))
        fields, files = self.form()
        try:
            received_by = proofs.received_by(fields.get("received_by"))
            if not (files.get("photo") or files.get("signature") or received_by):
                raise proofs.ProofRefused(400, proofs.NO_FIELDS)
            photo, signature = await proofs.clean_both(files.get("photo"), files.get("signature"))
            proof = await proofs.record(
                self.db, parcel["_id"], user.id, photo=photo, signature=signature, received_by=received_by,
                location=proofs.position(parcel, self.hub.latest_location(parcel["_id"])),
            )
        except proofs.ProofRefused as e:
            raise Refused(e.status, str(e)) from None
        self.send(proofs.public(proof, proofs.files_url(parcel["_id"])), status=201)

    def form(self) -> tuple[dict[str, str], dict[str, bytes]]:
        """The body's text fields and files, each named at most once; `Refused` 400 otherwise."""
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "multipart/form-data":
            raise Refused(400, "send the proof as multipart/form-data with photo, signature and received_by")
        arguments: dict[str, list[bytes]] = {}
        uploads: dict[str, list[HTTPFile]] = {}
        try:
            parse_body_arguments(content_type, self.raw_body(), arguments, uploads, self.request.headers)
        except HTTPInputError:
            raise Refused(400, "the multipart/form-data body is malformed") from None
        fields: dict[str, str] = {}
        files: dict[str, bytes] = {}
        for name in FIELDS:
            texts, sent = arguments.get(name, []), uploads.get(name, [])
            if len(texts) + len(sent) > 1:
                raise Refused(400, f"send {name} once")
            if name == "received_by":
                if sent:
                    raise Refused(400, "received_by must be a text field, not a file")
                try:
                    fields[name] = texts[0].decode("utf-8") if texts else ""
                except UnicodeDecodeError:
                    raise Refused(400, "received_by must be UTF-8 text") from None
            elif texts and texts[0]:  # (an empty one is a file input left empty: no file)
                raise Refused(400, f"{name} must be a file")
            elif sent:
                files[name] = sent[0].body
        return fields, files


class ProofImageHandler(ProofFiles, ParcelHandlerBase):
    """GET /api/parcels/<id>/proof/(photo|signature): for whoever may see the parcel (404 for
    anyone else, as for the parcel); before delivery, the proof waiting for it."""

    @described("The proof's photo or signature (before delivery, the proof waiting for it)",
               parameters=[IF_NONE_MATCH], responses={200: FILE, 304: None}, errors=(404,))
    async def get(self, parcel_id: str, kind: str) -> None:
        _, parcel = await self.caller_and_parcel(parcel_id)
        await self.send_file(proofs.shown(parcel, pending=True), kind)


class SharedProofHandler(ApiHandler):
    """GET /t/<token>/proof: the delivered parcel's proof for its share page (`{"proof": null}` before)."""

    @described("The delivered parcel's proof, for its share link (null before)", public=True,
               responses={200: obj({"proof": nullable(ref("Proof"))}, required=["proof"])}, errors=(404,))
    async def get(self, token: str) -> None:
        parcel = await self.shared_parcel(token)
        self.send({"proof": proofs.public(proofs.shown(parcel, pending=False), proofs.link_files_url(token))})


class SharedProofImageHandler(ProofFiles):
    """GET /t/<token>/proof/(photo|signature): the delivered parcel's proof files, to its live share link."""

    @described("The delivered proof's photo or signature, for its share link", public=True,
               parameters=[IF_NONE_MATCH], responses={200: FILE, 304: None}, errors=(404,))
    async def get(self, token: str, kind: str) -> None:
        parcel = await self.shared_parcel(token)
        await self.send_file(proofs.shown(parcel, pending=False), kind)

