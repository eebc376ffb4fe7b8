"""Server-rendered pages (docs/protocol.md, "Pages"): login, the role homes, the live map and the driver's page.

Every page goes through `PageHandler`, which sets the page-only headers (a
Content-Security-Policy without inline scripts, no caching of personal pages),
sends people who are not logged in to `/login?next=...`, answers a page of
another role with a 403 page, and renders every error as a page. Handlers stay
thin: they read through `models/` and hand plain values to the templates; the
live parts (map, socket, geolocation) are the ES modules in `static/js/`.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode, urlsplit

from handlers.base import LOGIN_COOKIE, BaseHandler, Refused, retry_after
from models import parcels, proofs, shares, users
from models.access import User, can_share, may_drive
from models.db import MAX_ID, iso, parse_id, utcnow
from models.locations import EARLIEST_FIX, MAX_HISTORY_PAGE
from models.parcels import FAILURE_LABELS
from realtime.journey import LOW_ACCURACY_M
from realtime.protocol import MAX_BATCH
from settings import Settings

HOME_BY_ROLE = {"client": "/parcels", "driver": "/driver", "dispatcher": "/dispatch"}
ROLE_PLURALS = {"client": "clients", "driver": "drivers", "dispatcher": "dispatchers"}
NAV_BY_ROLE = {
    "client": [("/parcels", "My parcels")],
    "driver": [("/driver", "My deliveries")],
    "dispatcher": [("/dispatch", "All parcels"), ("/dispatch/people", "People"),
                   ("/dispatch/integrations", "Integrations")],
}
STATUS_LABELS = {
    "pending": "Waiting for a driver",
    "assigned": "Driver assigned",
    "picked_up": "Picked up",
    "in_transit": "In transit",
    "delivered": "Delivered",
    "failed": "Not delivered",
    "cancelled": "Cancelled",
}
DRIVER_SEND_EVERY = 5  # seconds between two positions sent by the driver's page
DELIVER_FAR_M = 300  # metres from the destination past which "Delivered" warns the driver how far they are
DRIVER_TEXTS = {
    "help_on": f"Your shift is on: the customers of your parcels, this one included, see your position every "
               f"{DRIVER_SEND_EVERY} seconds. Turning tracking off here ends your shift on every page.",
    "help_off": f"Tracking is your shift: turn it on to share your position every {DRIVER_SEND_EVERY} seconds "
                "with the customers of this parcel and of your other parcels.",
    "finished": "This parcel is {status}: there is nothing left to track.",
    "finished_on_shift": "This parcel is {status}. Your shift goes on for your other parcels.",
    "lost": "Tracking stopped: you are no longer assigned to this parcel",
    "lost_help": "Your shift goes on for your other parcels: end it on My deliveries.",
    "deliver_far": "You are about {distance} from the destination ({place}).",
}
WEAK_GPS = "Weak GPS: your position is not precise right now, so the map does not move to it."
BOARD_STALE_AFTER = 60  # seconds without a report before the board highlights a truck
LAST_SEEN_AFTER = 30  # seconds without a fix before a map fades the truck and says when it was last seen
MAX_OFFLINE_AGE = int(EARLIEST_FIX.total_seconds())  # seconds a queued fix may wait before the server refuses it
PAGE_SIZE = 50
CLIENT_MAP_PARCELS = 50  # active parcels a client's map shows at once (a socket each, under the 100 a user may open)
RECENT_FINISHED = 20  # finished parcels the driver's page lists
# The dispatch page's status filter: value → (label, the statuses it shows: None for all of them).
DISPATCH_FILTER_LABELS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "": ("Active first", None),
    "active": ("Active only", parcels.ACTIVE),
    "all": ("All, newest first", None),
    **{s: (label, (s,)) for s, label in STATUS_LABELS.items()},
}
DISPATCH_FILTERS = {value: statuses for value, (_, statuses) in DISPATCH_FILTER_LABELS.items()}
# The steps a driver takes from their page, in order, with the button's text.
DRIVER_STEPS = (("picked_up", "Picked up"), ("in_transit", "In transit"), ("delivered", "Delivered"),
                ("failed", "Could not deliver"))
ERROR_TITLES = {
    400: "Bad request", 401: "Log in again", 403: "Not allowed", 404: "Not found", 405: "Not allowed",
    409: "Not possible now", 503: "Temporarily unavailable",
}
UNAVAILABLE = "The database is not answering right now. Live maps keep moving; try this page again in a moment."
HOST_PATTERN = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def safe_next(target: str) -> str:
    """A `next=` target only if it is a local path: a `/` then no second `/` or `\\`, and no
    control character, space or non-ASCII anywhere (browsers drop tabs and newlines from a
    URL, so `/<TAB>/evil.host` would become `//evil.host`, another site)."""
    if not target.startswith("/") or target[1:2] in ("/", "\\"):
        return ""
    if not target.isascii() or any(c <= " " or c in "\\\x7f" for c in target):
        return ""
    return target


def tile_source(tile_url: str) -> list[str]:
    """The CSP source that lets the map load tiles from TILE_URL (none needed for a local path)."""
    parts = urlsplit(tile_url)
    if not parts.netloc:
        return []
    labels = parts.netloc.split(".")
    if "{" in labels[0]:
        labels[0] = "*"  # {s}.tile.example.org: the subdomains a tile server rotates through
    if any("{" in label for label in labels):
        return []
    host = ".".join(labels)
    return [f"{parts.scheme}://{host}" if parts.scheme else host]


def socket_sources(public_ws_url: str, host: str) -> list[str]:
    """Where a page may open its tracking socket: its own origin, and PUBLIC_WS_URL."""
    sources = [f"ws://{host}", f"wss://{host}"] if HOST_PATTERN.fullmatch(host) else []
    parts = urlsplit(public_ws_url)
    if parts.scheme in ("ws", "wss", "http", "https") and parts.netloc:
        sources.append(f"{parts.scheme}://{parts.netloc}")
    return sources


def content_security_policy(config: Settings, host: str) -> str:
    """Scripts and styles from this origin only; tiles from TILE_URL's host; sockets to ours."""
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        " ".join(["img-src 'self' data:", *tile_source(config.tile_url)]),
        " ".join(["connect-src 'self'", *socket_sources(config.public_ws_url, host)]),
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def page_rules(config: Settings, **more: Any) -> str:
    """What the live pages' scripts need to know of the server's rules, as JSON for a
    `data-rules` attribute: the scripts keep no copy of their own."""
    return json.dumps({
        "labels": STATUS_LABELS, "finished": sorted(parcels.FINISHED), "en_route": list(parcels.EN_ROUTE),
        "status_order": list(parcels.STATUSES), "last_seen_after_s": LAST_SEEN_AFTER,
        "history_page": MAX_HISTORY_PAGE, "send_every_s": DRIVER_SEND_EVERY,
        "geofence_radius_m": config.geofence_radius_m, "stops_texts": STOPS_TEXTS, **more,
    })


# Where a parcel is on its driver's route, on the track and share pages (static/js/track.js words
# a `route_position` with them too).
STOPS_TEXTS = {"0": "Your parcel is the driver's next stop.", "1": "1 stop before yours.",
               "n": "{n} stops before yours."}


def stops_text(stops_before: int | None) -> str:
    """"2 stops before yours" (STOPS_TEXTS), or nothing for a parcel on no route."""
    if stops_before is None:
        return ""
    return STOPS_TEXTS.get(str(stops_before), STOPS_TEXTS["n"]).format(n=stops_before)


def driver_rules(config: Settings) -> str:
    """The rules of both driver pages: their texts, the offline queue's limits, how far from the
    destination "Delivered" warns, and how accurate a fix must be to count for that."""
    return page_rules(config, texts=DRIVER_TEXTS, weak_gps_text=WEAK_GPS, max_offline_fixes=MAX_BATCH,
                      max_offline_age_s=MAX_OFFLINE_AGE, deliver_far_m=DELIVER_FAR_M,
                      good_fix_accuracy_m=LOW_ACCURACY_M, proof=proofs.limits())


def place_text(point: dict[str, Any] | None) -> str:
    """An address as people read it; the coordinates when there is no address."""
    if not point:
        return ""
    return point.get("address") or f"{point['lat']:.5f}, {point['lng']:.5f}"


def parcel_view(parcel: dict[str, Any], names: dict[int, str] | None = None) -> dict[str, Any]:
    """What the templates show of a parcel: text ready to print, nothing to compute."""
    names = names or {}
    driver_id = parcel.get("driver_id")
    return {
        "id": parcel["_id"],
        "status": parcel["status"],
        "status_label": STATUS_LABELS.get(parcel["status"], parcel["status"]),
        "pickup": place_text(parcel["pickup"]),
        "destination": place_text(parcel["destination"]),
        "last_place": place_text(parcel.get("last_location")),
        "owner": names.get(parcel["owner_id"], f"client #{parcel['owner_id']}"),
        "driver_id": driver_id,
        "driver": names.get(driver_id, f"driver #{driver_id}") if driver_id is not None else "",
        "finished": parcel["status"] in parcels.FINISHED,
        "track_url": f"/parcels/{parcel['_id']}/track",
        "timeline": timeline_view(parcel),
        "assignable": parcel["status"] in parcels.ASSIGNABLE,
        "failure": failure_text(parcel),
        "attempts": parcel.get("attempts", 0),
        "stops_before": parcel.get("stops_before"),
        "stops_text": stops_text(parcel.get("stops_before")),
    }


def failure_text(parcel: dict[str, Any]) -> str:
    """Why its last delivery failed ("Nobody home: the gate was locked"), while it is failed."""
    failure = parcel.get("failure")
    if parcel["status"] != "failed" or not failure:
        return ""
    reason = FAILURE_LABELS.get(failure["reason"], failure["reason"])
    return f"{reason}: {failure['note']}" if failure.get("note") else reason


def timeline_view(parcel: dict[str, Any]) -> list[dict[str, Any]]:
    """Every status the parcel passed, oldest first, with its label and time."""
    return [{"status": step["status"], "label": STATUS_LABELS.get(step["status"], step["status"]),
             "timestamp": iso(step["timestamp"]),
             "reason": FAILURE_LABELS.get(step["reason"], step["reason"]) if "reason" in step else ""}
            for step in parcel.get("timeline", ())]


SHARED_FIELDS = ("id", "status", "status_label", "finished", "timeline", "stops_text")
SHARE_PARCEL_NAME = "Your parcel"  # what the share page calls the parcel: its recipient's, not "Parcel #12"


def rough_place(point: dict[str, Any]) -> str:
    """An address, or where it is to about a hundred metres: a recipient reads no six-decimal coordinates."""
    return point.get("address") or f"Near {point['lat']:.3f}, {point['lng']:.3f}"


def share_view(parcel: dict[str, Any], driver_name: str) -> dict[str, Any]:
    """What a share link shows of a parcel: `parcel_view`'s fields that hold no e-mail
    address and no user id, the places as people read them, and the driver by name
    (docs/protocol.md, "Share links")."""
    view = parcel_view(parcel)
    return {**{field: view[field] for field in SHARED_FIELDS}, "driver": driver_name or "Your driver",
            "name": SHARE_PARCEL_NAME, "pickup": rough_place(parcel["pickup"]),
            "destination": rough_place(parcel["destination"])}


def map_parcel(parcel: dict[str, Any], private: bool = True) -> dict[str, Any]:
    """A parcel as a live map's script reads it (`private=False`: without user ids, for a share link)."""
    public = parcels.public(parcel)
    for end in ("pickup", "destination"):  # copies: the parcel's own dicts stay as stored
        public[end] = {**public[end], "label": place_text(parcel[end])}
    if private:
        public["track_url"] = f"/parcels/{parcel['_id']}/track"
    else:
        del public["owner_id"], public["driver_id"]
        # The recipient's name only, and not the note for the driver (docs/protocol.md, "Share links").
        recipient = public.pop("recipient", None)
        public["recipient"] = recipient and {"name": recipient.get("name")}
        public.pop("note", None)
        # A driver's note on a failed delivery is for the dispatcher, not the recipient.
        del public["failure"]
        public["timeline"] = [{k: v for k, v in step.items() if k != "note"} for step in public["timeline"]]
    return public


def driver_steps(parcel: dict[str, Any]) -> list[dict[str, Any]]:
    """The driver's buttons for a parcel: each next status, and whether it can be taken now."""
    return [
        {"status": status, "label": label, "from": " ".join(sorted(parcels.TRANSITIONS[status])),
         "enabled": parcel["status"] in parcels.TRANSITIONS[status]}
        for status, label in DRIVER_STEPS
    ]


def page_url(path: str, **arguments: Any) -> str:
    """A link to another page of a list: this path with these query arguments (empty ones left out)."""
    return path + "?" + urlencode({k: v for k, v in arguments.items() if v not in ("", None)})


def sentence(text: str) -> str:
    """A refusal's message (API style: "a delivered parcel cannot be assigned") as a page shows it."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def user_label(user: User) -> str:
    return f"{user.name} ({user.email})" if user.name else user.email


class PageHandler(BaseHandler):
    """A page: its headers, its login and role checks, and its errors as pages."""

    roles: tuple[str, ...] = ()  # who may open it; empty: anyone logged in
    login_required = True

    @property
    def credentials_required(self) -> bool:  # the login form itself keeps its XSRF check
        return self.login_required

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", content_security_policy(self.config, self.request.host))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Permissions-Policy", "geolocation=(self), camera=(), microphone=()")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        await super().prepare()
        if not self.login_required:
            return
        user = self.current_user
        if user is None:
            if self.request.method not in ("GET", "HEAD"):
                raise Refused(401, "Your session has ended. Log in again, then try once more.")
            return self.redirect(self.get_login_url() + "?" + urlencode({"next": self.request.uri}))
        if self.roles and user.role not in self.roles:
            wanted = " and ".join(ROLE_PLURALS[r] for r in self.roles)
            raise Refused(403, f"This page is for {wanted}. You are logged in as a {user.role}.")

    def page(self, template: str, **context: Any) -> None:
        """Render a page with the layout's context (navigation, the person's home)."""
        user = self.current_user
        self.render_page(
            template,
            nav=NAV_BY_ROLE.get(user.role, []) if user else [],
            home=HOME_BY_ROLE.get(user.role, "/login") if user else "/login",
            path=self.request.path,
            **context,
        )

    def map_context(self) -> dict[str, Any]:
        """What every page with a live map needs: where its socket and its tiles are."""
        return {"ws_url": self.config.public_ws_url, "tile_url": self.config.tile_url,
                "blank_tile": self.static_url("img/tile.svg")}

    async def visible_parcel(self, parcel_id: str) -> dict[str, Any]:
        """The parcel if this person may see it; one 404 for missing and not-yours alike."""
        parcel = await self.parcel_if_visible(parcel_id)
        if parcel is None:
            raise Refused(404, "There is no such parcel, or it is not yours to see.")
        return parcel

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        retry_after(self, exc)
        if status_code == 503:
            message = UNAVAILABLE
        elif isinstance(exc, Refused):
            message = sentence(exc.message)
        elif status_code == 403 and "xsrf" in str(getattr(exc, "log_message", "") or "").lower():
            message = "This form has expired. Go back, reload the page and try again."
        elif status_code < 500:
            message = "That did not work."
        else:
            message = "Something went wrong on our side. Try again in a moment."
        title = ERROR_TITLES.get(status_code, "Sorry" if status_code >= 500 else "Not possible")
        try:
            self.page("error.html", status=status_code, title=title, message=message)
        except Exception:  # the error page itself failed: fall back to Tornado's plain one
            super().write_error(status_code, **kwargs)


class LoginPage(PageHandler):
    login_required = False

    def get(self) -> None:
        target = safe_next(self.get_query_argument("next", ""))
        if self.current_user is not None:
            return self.redirect(target or HOME_BY_ROLE[self.current_user.role])
        self.page("login.html", error=None, email="", next=target)

    async def post(self) -> None:
        email = self.get_body_argument("email", "")
        target = safe_next(self.get_body_argument("next", ""))
        try:
            user = await self.check_login(email, self.get_body_argument("password", ""))
        except Refused as e:
            self.set_status(e.status_code if e.status_code == 429 else 200)
            return self.page("login.html", error=e.message, email=email, next=target)
        self.set_login_cookie(user)
        self.redirect(target or HOME_BY_ROLE[user.role])


class LogoutHandler(PageHandler):
    login_required = False

    async def post(self) -> None:
        """Log out: this login cookie, and every token and cookie issued to this person before, stop working."""
        if self.current_user is not None:
            await users.end_sessions(self.db, self.current_user.id)
            self.hub.sessions_ended(self.current_user.id)
        self.clear_cookie(LOGIN_COOKIE)
        self.redirect("/login")


class HomePage(PageHandler):
    def get(self) -> None:
        self.redirect(HOME_BY_ROLE[self.current_user.role])


class ClientParcelsPage(PageHandler):
    roles = ("client",)

    async def get(self) -> None:
        before = self.int_argument("before", None, 1, MAX_ID)
        page = await parcels.list_visible(self.db, self.current_user, limit=PAGE_SIZE, before=before)
        drivers = await users.get_users(self.db, (p.get("driver_id") for p in page.parcels))
        names = {i: u.name for i, u in drivers.items()}
        # The map shows every active parcel, whichever page of the list is open.
        active = await parcels.list_visible(self.db, self.current_user, limit=CLIENT_MAP_PARCELS,
                                            statuses=parcels.ACTIVE)
        self.page("parcels.html", parcels=[parcel_view(p, names) for p in page.parcels],
                  older=page.next_before and page_url(self.request.path, before=page.next_before),
                  first=bool(before),
                  active_json=json.dumps([map_parcel(p) for p in active.parcels]),
                  rules_json=page_rules(self.config), **self.map_context())


class TrackPage(PageHandler):
    """The read-only live map; its owner, its driver and dispatchers may open it."""

    async def get(self, parcel_id: str) -> None:
        parcel = await self.visible_parcel(parcel_id)
        await parcels.with_stops_before(self.db, [parcel])
        driver = await users.get_user(self.db, parcel["driver_id"]) if parcel.get("driver_id") else None
        self.page(
            "track.html",
            parcel=parcel_view(parcel, {driver.id: driver.name} if driver else None),
            parcel_json=json.dumps(map_parcel(parcel)),
            rules_json=page_rules(self.config),
            history_url=f"/api/parcels/{parcel['_id']}/locations/",
            share_api=f"/api/parcels/{parcel['_id']}/share/" if can_share(self.current_user, parcel) else "",
            proof=proofs.public(parcel.get("proof"), proofs.files_url(parcel["_id"])),
            proof_source=f"/api/parcels/{parcel['_id']}/",  # the parcel, with its `proof` once delivered
            **self.map_context(),
        )


class SharePage(PageHandler):
    """`/t/<token>`: a share link's read-only live map, no login (docs/protocol.md, "Share links").

    It shows the driver's position only from the moment the parcel is on its way to the
    recipient (models.shares.position_since), and a finished parcel's final status without
    a truck; an expired, revoked or forged link gets a page of its own, for someone
    without an account (`write_error`)."""

    login_required = False

    async def get(self, token: str) -> None:
        parcel = await self.shared_parcel(token)
        await parcels.with_stops_before(self.db, [parcel])
        driver = await users.get_user(self.db, parcel["driver_id"]) if parcel.get("driver_id") else None
        shown = map_parcel(parcel, private=False)
        last = shown["last_location"]
        if not shares.may_show(shares.position_since_text(parcel, utcnow()), last and last["timestamp"]):
            shown["last_location"] = None  # before it is on its way to them (or after): no truck
        for end in ("pickup", "destination"):
            shown[end]["label"] = rough_place(parcel[end])
        shown["proof"] = proofs.public(proofs.shown(parcel, pending=False), proofs.link_files_url(token))
        self.page(
            "share.html",
            parcel=share_view(parcel, driver.name if driver else ""),
            parcel_json=json.dumps(shown),
            rules_json=page_rules(self.config, position_statuses=list(shares.POSITION_STATUSES),
                                  no_position_text=shares.NO_POSITION_YET, parcel_name=SHARE_PARCEL_NAME),
            share_token=token,
            history_url=f"/t/{token}/locations",
            business_name=self.config.business_name,
            position_statuses=shares.POSITION_STATUSES,
            no_position_text=shares.NO_POSITION_YET,
            proof=shown["proof"],
            proof_source=f"/t/{token}/proof",
            **self.map_context(),
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code != 404:
            return super().write_error(status_code, **kwargs)
        # No "Go to the login page": whoever holds a link need not have an account.
        self.page("share_gone.html", business_name=self.config.business_name)


def failure_choices() -> dict[str, Any]:
    """What the driver's "Could not deliver" dialog offers (templates/_fail_dialog.html)."""
    return {"failure_reasons": [(reason, FAILURE_LABELS[reason]) for reason in parcels.FAILURE_REASONS],
            "max_failure_note": parcels.MAX_FAILURE_NOTE}


def driver_view(parcel: dict[str, Any]) -> dict[str, Any]:
    """A parcel as the driver's pages show it: `parcel_view`, its next steps, and where its
    destination is (the "Delivered" confirmation measures the driver's distance to it)."""
    recipient = parcel.get("recipient") or {}
    window = parcel.get("window") or {}
    return {**parcel_view(parcel), "steps": driver_steps(parcel),
            "to_lat": parcel["destination"]["lat"], "to_lng": parcel["destination"]["lng"],
            "recipient": recipient.get("name") or "", "phone": recipient.get("phone") or "",
            "note": parcel.get("note") or "",
            "window_from": iso(window["from"]) if window else "", "window_to": iso(window["to"]) if window else ""}


class DriverParcelsPage(PageHandler):
    """The driver's parcels: every active one in their route's order (a dispatcher sets it,
    docs/protocol.md, "The route"), and the latest finished ones."""

    roles = ("driver",)

    async def get(self) -> None:
        active = await parcels.active_for_driver(self.db, self.current_user.id)
        finished = await parcels.find_page(self.db, {"driver_id": self.current_user.id}, limit=RECENT_FINISHED,
                                           statuses=sorted(parcels.FINISHED))
        self.page("driver.html", active=[driver_view(p) for p in active],
                  finished=[parcel_view(p) for p in finished.parcels],
                  rules_json=driver_rules(self.config),
                  ws_url=self.config.public_ws_url, **failure_choices())


class DriverParcelPage(PageHandler):
    """One assigned parcel: the shift's tracking toggle (the same shift as /driver's) and the status buttons."""

    roles = ("driver",)

    async def get(self, parcel_id: str) -> None:
        parcel = await self.visible_parcel(parcel_id)
        view = driver_view(parcel)
        finished = DRIVER_TEXTS["finished"].format(status=view["status_label"].lower())
        self.page(
            "driver_parcel.html",
            parcel=view,
            steps=view["steps"],
            help_text=finished if view["finished"] else DRIVER_TEXTS["help_off"],
            rules_json=driver_rules(self.config),
            ws_url=self.config.public_ws_url,
            **failure_choices(),
        )


class DispatchPage(PageHandler):
    """Parcels 50 a page, active ones first, with a status filter and a search by parcel id
    or by a client's or driver's e-mail; a driver picker on each unfinished parcel."""

    roles = ("dispatcher",)

    async def get(self) -> None:
        shown = self.get_query_argument("status", "")
        if shown not in DISPATCH_FILTERS:
            raise Refused(400, "Choose one of the filters in the list.")
        search = self.get_query_argument("q", "").strip()[:254]
        before = self.int_argument("before", None, 1, MAX_ID)
        later_part = self.get_query_argument("part", "")
        scope, problem = await self.search_scope(search)
        rows: list[dict[str, Any]] = []
        later: dict[str, Any] | None = None
        if scope is not None and search.isascii() and search.isdigit():
            parcel_id = parse_id(search)
            found = await parcels.get_parcel(self.db, parcel_id) if parcel_id else None
            wanted = DISPATCH_FILTERS[shown]
            rows = [found] if found and (wanted is None or found["status"] in wanted) else []
        elif scope is not None and shown:
            page = await parcels.find_page(self.db, scope, limit=PAGE_SIZE, before=before,
                                           statuses=DISPATCH_FILTERS[shown])
            rows, later = page.parcels, page.next_before and {"before": page.next_before}
        elif scope is not None:
            finished = later_part == "finished"
            rows, cursor = await parcels.active_first(self.db, scope, limit=PAGE_SIZE, before=before,
                                                      finished=finished)
            later = cursor and {"part": "finished" if cursor.finished else "", "before": cursor.before}
        attention: list[dict[str, Any]] = []
        if scope is not None and not (shown or before or later_part or search.isdigit()):
            # Failed deliveries lead the first page, to be assigned again or cancelled.
            attention = (await parcels.find_page(self.db, scope, limit=PAGE_SIZE, statuses=("failed",))).parcels
            leading = {p["_id"] for p in attention}
            rows = [p for p in rows if p["_id"] not in leading]
        stops = await parcels.with_stops_before(self.db, rows)
        names = await self.names(rows + attention)
        drivers = await self.application.drivers.users()
        self.page(
            "dispatch.html",
            parcels=[route_view(p, names, stops) for p in rows],
            attention=[route_view(p, names, stops) for p in attention],
            drivers=[{"email": u.email, "label": u.name} for u in drivers],
            filters=[(value, label) for value, (label, _) in DISPATCH_FILTER_LABELS.items()],
            shown=shown, search=search, problem=problem,
            later=later and page_url(self.request.path, status=shown, q=search, **later),
            first=page_url(self.request.path, status=shown, q=search) if before or later_part else None,
            notice=await self.assigned_notice() or await self.moved_notice(),
            rules_json=page_rules(self.config, stale_after_s=BOARD_STALE_AFTER),
            driver_names_json=json.dumps({str(u.id): u.name or u.email for u in drivers}),
            **self.map_context(),
        )

    async def search_scope(self, search: str) -> tuple[dict[str, Any] | None, str]:
        """Which parcels a search names: everyone's ({}), a client's or a driver's; None and
        a message when it names nobody."""
        if not search or (search.isascii() and search.isdigit()):
            return {}, ""
        found = await users.find_by_email(self.db, search)
        user = found[0] if found else None
        if user is None or user.role == "dispatcher":
            return None, f"No client or driver has the e-mail {search}. Search by parcel number or by e-mail."
        return ({"owner_id": user.id} if user.role == "client" else {"driver_id": user.id}), ""

    async def names(self, rows: list[dict[str, Any]]) -> dict[int, str]:
        people = await users.get_users(self.db, [*(p["owner_id"] for p in rows), *(p.get("driver_id") for p in rows)])
        return {i: user_label(u) for i, u in people.items()}

    async def assigned_notice(self) -> str:
        assigned = parse_id(self.get_query_argument("assigned", ""))
        if assigned is None:
            return ""
        parcel = await parcels.get_parcel(self.db, assigned)
        driver = parcel and parcel.get("driver_id") and await users.get_user(self.db, parcel["driver_id"])
        return f"Parcel #{parcel['_id']} is now assigned to {user_label(driver)}." if driver else ""


    async def moved_notice(self) -> str:
        moved = parse_id(self.get_query_argument("moved", ""))
        parcel = moved and await parcels.get_parcel(self.db, moved)
        if not parcel or parcel["status"] in parcels.FINISHED or not parcel.get("driver_id"):
            return ""
        await parcels.with_stops_before(self.db, [parcel])
        return f"Parcel #{parcel['_id']} is now stop {parcel['stops_before'] + 1} of its driver's route."


def route_view(parcel: dict[str, Any], names: dict[int, str], stops: dict[int, int]) -> dict[str, Any]:
    """A parcel of the dispatch list with its place on its driver's route, for the up and down buttons."""
    view = {**parcel_view(parcel, names), "stop": None, "stops": 0}
    if view["stops_before"] is not None:
        view["stop"], view["stops"] = view["stops_before"] + 1, stops.get(parcel["driver_id"], 0)
    return view


class DispatchMove(PageHandler):
    """The dispatch page's up and down buttons: a stop moves one place on its driver's route."""

    roles = ("dispatcher",)

    async def post(self, parcel_id: str) -> None:
        parcel = await self.visible_parcel(parcel_id)
        direction = self.get_body_argument("direction", "")
        if direction not in ("up", "down"):
            raise Refused(400, "Move a stop up or down.")
        driver_id = parcel.get("driver_id")
        if parcel["status"] in parcels.FINISHED or driver_id is None:
            raise Refused(409, f"Parcel #{parcel['_id']} is on no driver's route.")
        order = [doc["_id"] for doc in await parcels.active_for_driver(self.db, driver_id)]
        at = order.index(parcel["_id"])
        to = max(0, min(len(order) - 1, at + (-1 if direction == "up" else 1)))
        order[at], order[to] = order[to], order[at]
        try:
            await parcels.set_route(self.db, driver_id, order)
        except parcels.InvalidChange:  # the route changed meanwhile
            raise Refused(409, "The route changed meanwhile; look at it again.") from None
        self.hub.route_reordered(driver_id)
        self.redirect(f"/dispatch?moved={parcel['_id']}#parcel-{parcel['_id']}")


class DispatchAssign(PageHandler):
    """The dispatch page's form: assign (or reassign) a parcel's driver, named by e-mail."""

    roles = ("dispatcher",)

    async def post(self, parcel_id: str) -> None:
        parcel = await self.visible_parcel(parcel_id)
        named = self.get_body_argument("driver", "").strip()
        found = await users.find_by_email(self.db, named) if "@" in named and len(named) <= 254 else None
        if not may_drive(found and found[0]):
            raise Refused(400, "Choose one of the drivers in the list (type a name or an e-mail).")
        await self.assign(parcel, found[0])
        self.redirect(f"/dispatch?assigned={parcel['_id']}#parcel-{parcel['_id']}")


class NotFoundPage(PageHandler):
    login_required = False

    def check_xsrf_cookie(self) -> None:
        pass  # nothing happens here, so a POST to nowhere gets the 404 too

    async def prepare(self) -> None:
        await super().prepare()
        raise Refused(404, "There is no page at this address.")

