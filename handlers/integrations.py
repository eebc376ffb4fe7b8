"""Integrations (docs/protocol.md, "API keys", "Webhooks"): a shop's system gets an API key
and webhooks; dispatchers make, list and revoke them through the API and the
`/dispatch/integrations` page.

Thin: what a key and a hook are, and their rules, are models/keys.py and
models/webhooks.py; who may manage them is models/access.py's (`can_manage_integrations`).
The page works without JavaScript: plain forms, each problem next to its field with what
was typed kept; a new key or secret is shown in the answer to the form that made it, once
(nothing keeps it to show again); revoking and deleting ask first (a dialog, or without
JavaScript a page that asks).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from handlers.base import ApiHandler, Refused
from handlers.openapi import TIME, array, described, nullable, obj
from handlers.pages import PageHandler, sentence
from models import keys, webhooks
from models.access import READ, SCOPES, WRITE, User, can_manage_integrations
from models.db import iso, parse_id, utcnow
from models.intake import InvalidField
from realtime.events import TYPES

INTEGRATIONS = "/dispatch/integrations"
NOT_MANAGER = "only a dispatcher can manage API keys and webhooks"
SCOPE_LABELS = {READ: "Read parcels and their history", WRITE: "Create, import, update and cancel parcels"}
EVENT_LABELS = {
    "parcel.created": "A parcel is created", "parcel.status_changed": "Its status changes",
    "parcel.delivered": "It is delivered", "parcel.failed": "A delivery fails",
    "parcel.arriving": "Its driver is close to the destination",
}
KEY_SHOWN_ONCE = ("Copy this key now and keep it somewhere safe: it is shown only this once. "
                  "It is stored hashed, so nobody can show it again; if it is lost, make a new one.")
SECRET_SHOWN_ONCE = ("Copy this signing secret now: it is shown only this once. Your system checks each "
                     "webhook's signature with it (any Standard Webhooks library does).")
CONFIRM = {
    "revoke": {"title": "Revoke {name}?", "button": "Yes, revoke",
               "text": "Every system using this key is refused at once. A revoked key cannot be used again: "
                       "make a new key instead."},
    "delete": {"title": "Delete the webhook to {name}?", "button": "Yes, delete",
               "text": "Nothing more is sent to this URL, not even what is waiting to be tried again, and its "
                       "delivery attempts are forgotten."},
}

# The API's schemas of keys, hooks and attempts (handlers/openapi.py assembles them).
KEY_SCHEMA = obj({"id": {"type": "integer", "minimum": 1}, "name": {"type": "string"},
                  "scopes": array({"enum": list(SCOPES)}), "created_at": TIME, "last_used_at": nullable(TIME),
                  "revoked": {"type": "boolean"}, "revoked_at": nullable(TIME)},
                 required=["id", "name", "scopes", "created_at", "last_used_at", "revoked", "revoked_at"])
NEW_KEY_SCHEMA = obj({"id": {"type": "integer", "minimum": 1}, "name": {"type": "string"},
                      "scopes": array({"enum": list(SCOPES)}),
                      "key": {"type": "string", "description": "the key itself, shown only in this answer"}},
                     required=["id", "name", "scopes", "key"])
HOOK_SCHEMA = obj({"id": {"type": "integer", "minimum": 1}, "url": {"type": "string"},
                   "events": array({"enum": list(TYPES)}), "created_at": TIME},
                  required=["id", "url", "events", "created_at"])
NEW_HOOK_SCHEMA = obj({"id": {"type": "integer", "minimum": 1}, "url": {"type": "string"},
                       "events": array({"enum": list(TYPES)}), "created_at": TIME,
                       "secret": {"type": "string", "pattern": "^whsec_",
                                  "description": "the signing secret, shown only in this answer"}},
                      required=["id", "url", "events", "secret"])
ATTEMPT_SCHEMA = obj({"event": {"enum": list(TYPES)}, "parcel_id": {"type": "integer"},
                      "webhook_id": {"type": "string"}, "status": nullable({"type": "integer"}),
                      "error": nullable({"type": "string"}), "at": TIME, "duration_ms": nullable({"type": "integer"})},
                     required=["event", "parcel_id", "webhook_id", "status", "error", "at"])


def new_key_answer(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {"id": doc["_id"], "name": doc["name"], "scopes": doc["scopes"], "key": key}


def new_hook_answer(doc: dict[str, Any]) -> dict[str, Any]:
    return {**webhooks.public(doc), "secret": doc["secret"]}


# -- the API ---------------------------------------------------------------------------


class IntegrationsApi(ApiHandler):
    def manager(self) -> User:
        """The caller, if a dispatcher (an API key is refused before: it has no scope here)."""
        user = self.require_user()
        if not can_manage_integrations(user):
            raise Refused(403, NOT_MANAGER)
        return user


class KeysHandler(IntegrationsApi):
    """GET /api/keys/: every key, newest first, without its secret. POST: a new key, shown once."""

    @described("The API keys, newest first (dispatchers); never the keys themselves",
               responses={200: array(KEY_SCHEMA)}, errors=(403,))
    async def get(self) -> None:
        self.manager()
        self.send([keys.public(doc) for doc in await keys.list_keys(self.db)])

    @described("Make an API key for a shop's system (dispatchers): the key is in this answer only",
               "`Authorization: Bearer <key>` then acts as a dispatcher limited to the scopes: "
               "parcels:read reads parcels and their history; parcels:write creates, imports, updates "
               "(PATCH) and cancels them. Everything else answers 403.",
               body=obj({"name": {"type": "string", "minLength": 1, "maxLength": keys.MAX_NAME},
                         "scopes": {**array({"enum": list(SCOPES)}), "minItems": 1}},
                        required=["name", "scopes"]),
               responses={201: NEW_KEY_SCHEMA}, errors=(403,))
    async def post(self) -> None:
        user = self.manager()
        body = self.json_body()
        try:
            name, scopes = keys.check_name(body.get("name")), keys.check_scopes(body.get("scopes"))
        except InvalidField as e:
            raise Refused(400, str(e)) from None
        doc, key = await keys.create(self.db, name=name, scopes=scopes, created_by=user.id, now=utcnow())
        self.send(new_key_answer(doc, key), status=201)


class KeyHandler(IntegrationsApi):
    """DELETE /api/keys/<id>/: revoke a key, at once, in every process."""

    @described("Revoke an API key (dispatchers): refused from now on, in every process",
               responses={204: None}, errors=(403, 404))
    async def delete(self, key_id: str) -> None:
        self.manager()
        if await keys.revoke(self.db, int(key_id), utcnow()) is None:
            raise Refused(404, "no such API key")
        self.set_status(204)
        self.finish()


class WebhooksHandler(IntegrationsApi):
    """GET /api/webhooks/: every hook, without its secret. POST: a new hook, its secret shown once."""

    @described("The webhooks, newest first (dispatchers); never their secrets",
               responses={200: array(HOOK_SCHEMA)}, errors=(403,))
    async def get(self) -> None:
        self.manager()
        self.send([webhooks.public(doc) for doc in await webhooks.list_hooks(self.db)])

    @described("Subscribe a URL to parcel events (dispatchers): the signing secret is in this answer only",
               "Each event is POSTed as JSON {type, timestamp, data: the parcel} and signed as the Standard "
               "Webhooks specification says (webhook-id, webhook-timestamp, webhook-signature), at least once: "
               "anything but a 2xx within 10 s is tried again with backoff for 24 h. With APP_ENV=production "
               "the URL must be https:// and resolve to public addresses only.",
               body=obj({"url": {"type": "string", "minLength": 1, "maxLength": webhooks.MAX_URL},
                         "events": {**array({"enum": list(TYPES)}), "minItems": 1}},
                        required=["url", "events"]),
               responses={201: NEW_HOOK_SCHEMA}, errors=(403, 409))
    async def post(self) -> None:
        user = self.manager()
        body = self.json_body()
        try:
            events = webhooks.check_events(body.get("events"))
            url = await webhooks.check_url(body.get("url"), self.config.production)
            doc = await webhooks.create(self.db, url=url, events=events, created_by=user.id, now=utcnow())
        except InvalidField as e:
            raise Refused(400, str(e)) from None
        except webhooks.TooMany as e:
            raise Refused(409, str(e)) from None
        self.send(new_hook_answer(doc), status=201)


class WebhookHandler(IntegrationsApi):
    """DELETE /api/webhooks/<id>/: stop a hook (what is queued for it is dropped)."""

    @described("Delete a webhook (dispatchers): nothing more is sent to it", responses={204: None},
               errors=(403, 404))
    async def delete(self, hook_id: str) -> None:
        self.manager()
        if not await webhooks.delete(self.db, int(hook_id)):
            raise Refused(404, "no such webhook")
        self.set_status(204)
        self.finish()


class DeliveriesHandler(IntegrationsApi):
    """GET /api/webhooks/<id>/deliveries/: the hook's last 100 attempts, newest first."""

    @described("A webhook's last 100 delivery attempts, newest first (dispatchers)",
               "Each with its event, its parcel, its webhook-id, and the answer's status code or the error.",
               responses={200: array(ATTEMPT_SCHEMA)}, errors=(403, 404))
    async def get(self, hook_id: str) -> None:
        self.manager()
        hook = await webhooks.get_hook(self.db, int(hook_id))
        if hook is None:
            raise Refused(404, "no such webhook")
        self.send([webhooks.attempt_public(doc) for doc in await webhooks.attempts(self.db, hook["_id"])])


# -- the page --------------------------------------------------------------------------


def when(moment: datetime | None) -> dict[str, str] | None:
    """A time for a `<time data-local>`: ISO for the page's script, and UTC text without it."""
    if moment is None:
        return None
    return {"iso": iso(moment), "text": f"{moment.day} {moment:%b %Y, %H:%M} UTC"}


def key_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], "name": doc["name"], "scopes": doc["scopes"], "created": when(doc["created_at"]),
            "last_used": when(doc.get("last_used_at")), "revoked": when(doc.get("revoked_at"))}


def attempt_view(doc: dict[str, Any]) -> dict[str, Any]:
    status, error = doc.get("status"), doc.get("error")
    return {"at": when(doc["at"]), "event": doc["event"], "parcel_id": doc["parcel_id"],
            "ok": error is None and status is not None and 200 <= status < 300,
            "outcome": f"{status}" if error is None else error, "duration_ms": doc.get("duration_ms")}


class IntegrationsBase(PageHandler):
    roles = ("dispatcher",)

    async def show(self, *, new_key: dict[str, Any] | None = None, new_hook: dict[str, Any] | None = None,
                   key_typed: dict[str, Any] | None = None, key_problems: dict[str, str] | None = None,
                   hook_typed: dict[str, Any] | None = None, hook_problems: dict[str, str] | None = None,
                   notice: str = "") -> None:
        """The page: the keys and hooks as they are now, the two forms (as typed, with their
        problems), and a key or secret just made."""
        hooks = []
        for doc in await webhooks.list_hooks(self.db):
            tried = [attempt_view(a) for a in await webhooks.attempts(self.db, doc["_id"])]
            hooks.append({"id": doc["_id"], "url": doc["url"], "events": [EVENT_LABELS[e] for e in doc["events"]],
                          "created": when(doc["created_at"]), "attempts": tried})
        self.page(
            "integrations.html",
            confirm=None,
            keys=[key_view(doc) for doc in await keys.list_keys(self.db)],
            hooks=hooks,
            new_key=new_key, new_hook=new_hook,
            key_typed=key_typed or {"name": "", "scopes": [READ, WRITE]},
            key_problems=key_problems or {},
            hook_typed=hook_typed or {"url": "", "events": list(TYPES)},
            hook_problems=hook_problems or {},
            scopes=list(SCOPE_LABELS.items()), events=list(EVENT_LABELS.items()),
            max_name=keys.MAX_NAME, max_url=webhooks.MAX_URL, max_hooks=webhooks.MAX_WEBHOOKS,
            kept_attempts=webhooks.KEPT_ATTEMPTS,
            production=self.config.production,
            key_shown_once=KEY_SHOWN_ONCE, secret_shown_once=SECRET_SHOWN_ONCE,
            confirm_json=json.dumps(CONFIRM),
            notice=notice,
        )

    def confirmed(self, action: str, name: str, back: str) -> bool:
        """Whether the person said yes (the dialog's `confirmed`); without it, a page that asks."""
        if self.get_body_argument("confirmed", "") == "yes":
            return True
        texts = CONFIRM[action]
        self.page("integrations.html", confirm={**texts, "title": texts["title"].format(name=name),
                                                "action": self.request.path, "back": back})
        return False


class IntegrationsPage(IntegrationsBase):
    """`/dispatch/integrations`: API keys and webhooks."""

    async def get(self) -> None:
        await self.show(notice=await self.notice())

    async def notice(self) -> str:
        """What the last step did: `revoked=<key id>` or `deleted=1`."""
        revoked = parse_id(self.get_query_argument("revoked", ""))
        doc = revoked and await keys.get_key(self.db, revoked)
        if doc:
            return f"The key “{doc['name']}” is revoked: every system using it is refused now."
        if self.get_query_argument("deleted", ""):
            return "The webhook is deleted: nothing more is sent to it."
        return ""


class NewKeyPage(IntegrationsBase):
    """The "Make a key" form: the page again, with the new key shown once (or the problems)."""

    async def post(self) -> None:
        typed = {"name": self.get_body_argument("name", ""), "scopes": self.get_body_arguments("scopes")}
        problems: dict[str, str] = {}
        name = scopes = None
        try:
            name = keys.check_name(typed["name"])
        except InvalidField as e:
            problems["name"] = sentence(f"the name {e.problem}")
        try:
            scopes = keys.check_scopes(typed["scopes"])
        except InvalidField:
            problems["scopes"] = "Choose at least one of the two."
        if problems:
            self.set_status(400)
            return await self.show(key_typed=typed, key_problems=problems)
        doc, key = await keys.create(self.db, name=name, scopes=scopes, created_by=self.current_user.id,
                                     now=utcnow())
        await self.show(new_key={**key_view(doc), "key": key})


class RevokeKeyPage(IntegrationsBase):
    """A key's Revoke button (asks first: `confirmed`)."""
    async def post(self, key_id: str) -> None:
        doc = await keys.get_key(self.db, int(key_id))
        if doc is None:
            raise Refused(404, "There is no such API key.")
        if not self.confirmed("revoke", f"the key “{doc['name']}”", f"{INTEGRATIONS}#key-{doc['_id']}"):
            return
        await keys.revoke(self.db, doc["_id"], utcnow())
        self.redirect(f"{INTEGRATIONS}?revoked={doc['_id']}#key-{doc['_id']}", status=303)


class NewWebhookPage(IntegrationsBase):
    """The "Add a webhook" form: the page again, with the new secret shown once (or the problems)."""

    async def post(self) -> None:
        typed = {"url": self.get_body_argument("url", "").strip(), "events": self.get_body_arguments("events")}
        problems: dict[str, str] = {}
        url = events = None
        try:
            events = webhooks.check_events(typed["events"])
        except InvalidField:
            problems["events"] = "Choose at least one event."
        try:
            url = await webhooks.check_url(typed["url"], self.config.production)
        except InvalidField as e:
            problems["url"] = sentence(f"the URL {e.problem}")
        doc = None
        if not problems:
            try:
                doc = await webhooks.create(self.db, url=url, events=events, created_by=self.current_user.id,
                                            now=utcnow())
            except webhooks.TooMany as e:
                problems["url"] = sentence(str(e))
        if doc is None:
            self.set_status(400)
            return await self.show(hook_typed=typed, hook_problems=problems)
        await self.show(new_hook={"id": doc["_id"], "url": doc["url"], "secret": doc["secret"]})


class DeleteWebhookPage(IntegrationsBase):
    """A webhook's Delete button (asks first: `confirmed`)."""
    async def post(self, hook_id: str) -> None:
        doc = await webhooks.get_hook(self.db, int(hook_id))
        if doc is None:
            raise Refused(404, "There is no such webhook.")
        if not self.confirmed("delete", doc["url"], f"{INTEGRATIONS}#hook-{doc['_id']}"):
            return
        await webhooks.delete(self.db, doc["_id"])
        self.redirect(f"{INTEGRATIONS}?deleted=1#hooks-title", status=303)
