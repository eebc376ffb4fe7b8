"""E-mail to a parcel's recipient (docs/protocol.md, "E-mail to the recipient"): the
messages, the addresses with their unsubscribe tokens, and sending one.

`compose` renders a notification's template pair (templates/email/<kind>.txt and .html)
into the payload the outbox keeps (models/outbox.py), so a retry after a restart sends
the very message that was queued. `Mailer.send` is the outbox's sender of e-mail: it
checks the address did not unsubscribe meanwhile, then sends through SMTP (aiosmtplib),
or without SMTP_URL logs one line instead.

Each address the product writes to has a document in `email_addresses` (`_id`: the address
lower-cased) with a random `token`, the one its unsubscribe link (`/u/<token>`) names,
and `unsubscribed_at` once it said no more.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2
from pymongo.errors import DuplicateKeyError

from models.db import Database, utcnow
from models.outbox import SEND_TIMEOUT, Dropped
from settings import Settings, smtp_server

log = logging.getLogger("parcel.mail")

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"
SUBJECTS = {
    "out_for_delivery": "Your parcel is out for delivery",
    "arriving": "Your parcel is arriving soon",
    "delivered": "Your parcel was delivered",
    "not_delivered": "We could not deliver your parcel",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
)


def moment_text(moment: datetime) -> str:
    """A time as an e-mail says it: `14:05 UTC, 8 January 2026` (the recipient's zone is not known)."""
    return f"{moment:%H:%M} UTC, {moment.day} {moment:%B %Y}"


def compose(kind: str, *, to: str, name: str, business_name: str, sender: str, unsubscribe_url: str,
            **facts: Any) -> dict[str, Any]:
    """The payload of one notification (`kind`, one of SUBJECTS) to `to`: its headers and
    both parts, rendered now. `facts` are what its templates say (templates/email/)."""
    subject = f"{SUBJECTS[kind]} · {business_name}"
    context = {"to": to, "name": name, "business_name": business_name, "subject": subject,
               "unsubscribe_url": unsubscribe_url, **facts}
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    return {
        "to": to, "name": name, "subject": subject, "unsubscribe": unsubscribe_url,
        "message_id": make_msgid(kind.replace("_", "-"), domain=domain),  # the same on every retry
        "text": _templates.get_template(f"{kind}.txt").render(context).strip() + "\n",
        "html": _templates.get_template(f"{kind}.html").render(context),
    }


def message(payload: dict[str, Any], sender: str, business_name: str) -> EmailMessage:
    """The e-mail of a payload: plain text and HTML, with `List-Unsubscribe` (one click, RFC 8058)."""
    shown, address = parseaddr(sender)
    mail = EmailMessage()
    mail["From"] = Address(shown or business_name, addr_spec=address)
    mail["To"] = Address(payload["name"], addr_spec=payload["to"]) if payload["name"] else payload["to"]
    mail["Subject"] = payload["subject"]
    mail["Date"] = format_datetime(utcnow())
    mail["Message-ID"] = payload["message_id"]
    mail["List-Unsubscribe"] = f"<{payload['unsubscribe']}>"
    mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(payload["text"])
    mail.add_alternative(payload["html"], subtype="html")
    return mail


class Mailer:
    """The outbox's sender of e-mail (`send`): through SMTP_URL's server, or, without one,
    a log line per e-mail."""

    def __init__(self, db: Database, config: Settings) -> None:
        self.db = db
        self.config = config
        self.server = smtp_server(config.smtp_url) if config.smtp_url else None

    async def send(self, payload: dict[str, Any]) -> None:
        if await unsubscribed(self.db, payload["to"]):
            raise Dropped("the address unsubscribed")
        if self.server is None:
            log.info("e-mail not sent (no SMTP_URL) to %s: %s", payload["to"], payload["subject"])
            return
        server = self.server
        try:
            await aiosmtplib.send(
                message(payload, self.config.smtp_from, self.config.business_name),
                hostname=server.host, port=server.port, use_tls=server.tls,
                username=server.username or None, password=server.password or None, timeout=SEND_TIMEOUT,
            )
        except aiosmtplib.SMTPRecipientsRefused as e:
            # The server knows the address will never take it (5xx): retrying for a day changes nothing.
            if e.recipients and all(500 <= r.code < 600 for r in e.recipients):
                raise Dropped(f"the mail server refused the address: {e.recipients[0].message}") from None
            raise


# -- the addresses -----------------------------------------------------------------------


async def address(db: Database, email: str, now: datetime | None = None) -> dict[str, Any]:
    """The record of an address the product writes to, made on first use: its `token`
    (the unsubscribe link's) and `unsubscribed_at` (None while it takes e-mail)."""
    key = email.lower()
    doc = await db.email_addresses.find_one({"_id": key})
    if doc is None:
        try:
            await db.email_addresses.insert_one({"_id": key, "token": secrets.token_urlsafe(16),
                                                 "created_at": now or utcnow(), "unsubscribed_at": None})
        except DuplicateKeyError:
            pass  # made by another process a moment ago
        doc = await db.email_addresses.find_one({"_id": key})
    return doc


async def unsubscribed(db: Database, email: str) -> bool:
    """Did this address ask for no more e-mail?"""
    doc = await db.email_addresses.find_one({"_id": email.lower()})
    return doc is not None and doc.get("unsubscribed_at") is not None


async def find_token(db: Database, token: str) -> dict[str, Any] | None:
    """The address an unsubscribe link's token names, if any."""
    return await db.email_addresses.find_one({"token": token})


async def unsubscribe(db: Database, token: str, now: datetime | None = None) -> dict[str, Any] | None:
    """No more e-mail to the address this token names (the first time counts); its record, or None."""
    doc = await find_token(db, token)
    if doc is not None and doc.get("unsubscribed_at") is None:
        doc["unsubscribed_at"] = now or utcnow()
        await db.email_addresses.update_one({"_id": doc["_id"], "unsubscribed_at": None},
                                            {"$set": {"unsubscribed_at": doc["unsubscribed_at"]}})
    return doc
