"""Server-rendered pages (CONTRACT §5): login, the role homes, the live map and the driver's page.

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

import tornado.web

from handlers.base import LOGIN_COOKIE, BaseHandler, Refused
from models import parcels, users
from models.access import User
from settings import Settings

HOME_BY_ROLE = {"client": "/parcels", "driver": "/driver", "dispatcher": "/dispatch"}
ROLE_PLURALS = {"client": "clients", "driver": "drivers", "dispatcher": "dispatchers"}
NAV_BY_ROLE = {
    "client": [("/parcels", "My parcels")],
    "driver": [("/driver", "My deliveries")],
    "dispatcher": [("/dispatch", "All parcels")],
}
STATUS_LABELS = {
    "pending": "Waiting for a driver",
    "assigned": "Driver assigned",
    "picked_up": "Picked up",
    "in_transit": "In transit",
    "delivered": "Delivered",
    "cancelled": "Cancelled",
}
# The steps a driver takes from their page, in order, with the button's text.
DRIVER_STEPS = (("picked_up", "Picked up"), ("in_transit", "In transit"), ("delivered", "Delivered"))
ERROR_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Not allowed", 409: "Not possible now"}
HOST_PATTERN = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


class PageError(tornado.web.HTTPError):
    """A failure shown to the person as a page with this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status)
        self.message = message


def safe_next(target: str) -> str:
    """A `next=` target only if it is a local path (no scheme, no host, no `//`)."""
    if not target.startswith("/") or target.startswith("//") or any(c in target for c in "\\\r\n"):
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
    }


def user_label(user: User) -> str:
    return f"{user.name} ({user.email})" if user.name else user.email


class PageHandler(BaseHandler):
    """A page: its headers, its login and role checks, and its errors as pages."""

    roles: tuple[str, ...] = ()  # who may open it; empty: anyone logged in
    login_required = True

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
                raise PageError(403, "Your session has ended. Log in again, then try once more.")
            return self.redirect(self.get_login_url() + "?" + urlencode({"next": self.request.uri}))
        if self.roles and user.role not in self.roles:
            wanted = " and ".join(ROLE_PLURALS[r] for r in self.roles)
            raise PageError(403, f"This page is for {wanted}. You are logged in as a {user.role}.")

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

    async def visible_parcel(self, parcel_id: str) -> dict[str, Any]:
        """The parcel if this person may see it; one 404 for missing and not-yours alike."""
        parcel = await self.parcel_if_visible(parcel_id)
        if parcel is None:
            raise PageError(404, "There is no such parcel, or it is not yours to see.")
        return parcel

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, PageError):
            message = exc.message
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
            self.set_status(e.status if e.status == 429 else 200)
            return self.page("login.html", error=e.message, email=email, next=target)
        self.set_login_cookie(user)
        self.redirect(target or HOME_BY_ROLE[user.role])


class LogoutHandler(PageHandler):
    login_required = False

    def post(self) -> None:
        self.clear_cookie(LOGIN_COOKIE)
        self.redirect("/login")


class HomePage(PageHandler):
    def get(self) -> None:
        self.redirect(HOME_BY_ROLE[self.current_user.role])


class ClientParcelsPage(PageHandler):
    roles = ("client",)

    async def get(self) -> None:
        found = await parcels.list_visible(self.db, self.current_user)
        drivers = await users.get_users(self.db, (p.get("driver_id") for p in found))
        self.page("parcels.html", parcels=[parcel_view(p, {i: u.name for i, u in drivers.items()}) for p in found])


class TrackPage(PageHandler):
    """The read-only live map; its owner, its driver and dispatchers may open it."""

    async def get(self, parcel_id: str) -> None:
        parcel = await self.visible_parcel(parcel_id)
        driver = await users.get_user(self.db, parcel["driver_id"]) if parcel.get("driver_id") else None
        public = parcels.public(parcel)
        for end in ("pickup", "destination"):  # copies: the parcel's own dicts stay as stored
            public[end] = {**public[end], "label": place_text(parcel[end])}
        self.page(
            "track.html",
            parcel=parcel_view(parcel, {driver.id: driver.name} if driver else None),
            parcel_json=json.dumps(public),
            labels_json=json.dumps(STATUS_LABELS),
            ws_url=self.config.public_ws_url,
            tile_url=self.config.tile_url,
            blank_tile=self.static_url("img/tile.svg"),
        )


class DriverParcelsPage(PageHandler):
    roles = ("driver",)

    async def get(self) -> None:
        found = await parcels.list_visible(self.db, self.current_user)
        views = [parcel_view(p) for p in found]
        self.page("driver.html", active=[v for v in views if not v["finished"]],
                  finished=[v for v in views if v["finished"]])


class DriverParcelPage(PageHandler):
    """The driver's tracking toggle and status buttons for one assigned parcel."""

    roles = ("driver",)

    async def get(self, parcel_id: str) -> None:
        parcel = await self.visible_parcel(parcel_id)
        steps = [
            {"status": status, "label": label, "from": " ".join(sorted(parcels.TRANSITIONS[status])),
             "enabled": parcel["status"] in parcels.TRANSITIONS[status]}
            for status, label in DRIVER_STEPS
        ]
        self.page(
            "driver_parcel.html",
            parcel=parcel_view(parcel),
            steps=steps,
            labels_json=json.dumps(STATUS_LABELS),
            ws_url=self.config.public_ws_url,
        )


class DispatchPage(PageHandler):
    """Every parcel with its owner, driver and status; a driver picker per parcel."""

    roles = ("dispatcher",)

    async def get(self) -> None:
        found = await parcels.list_visible(self.db, self.current_user)
        all_drivers = await users.list_users(self.db, "driver")
        owners = await users.get_users(self.db, (p["owner_id"] for p in found))
        names = {u.id: user_label(u) for u in [*all_drivers, *owners.values()]}
        drivers = [{"id": u.id, "label": user_label(u)} for u in all_drivers]
        rows = [parcel_view(p, names) for p in found]
        notice = ""
        assigned = self.get_query_argument("assigned", "")
        done = next((r for r in rows if str(r["id"]) == assigned), None)
        if done is not None and done["driver"]:
            notice = f"Parcel #{done['id']} is now assigned to {done['driver']}."
        self.page("dispatch.html", parcels=rows, drivers=drivers, notice=notice)


class DispatchAssign(PageHandler):
    """The dispatch page's form: assign (or reassign) a parcel's driver."""

    roles = ("dispatcher",)

    async def post(self, parcel_id: str) -> None:
        parcel = await self.visible_parcel(parcel_id)
        raw = self.get_body_argument("driver_id", "")
        try:
            await self.assign_driver(parcel, int(raw) if raw.isdigit() and len(raw) < 19 else None)
        except Refused as e:
            message = "Choose one of the drivers in the list." if e.status == 400 else f"Parcel #{parcel['_id']}: {e}."
            raise PageError(e.status, message) from None
        self.redirect(f"/dispatch?assigned={parcel['_id']}#parcel-{parcel['_id']}")


class NotFoundPage(PageHandler):
    login_required = False

    def check_xsrf_cookie(self) -> None:
        pass  # nothing happens here, so a POST to nowhere gets the 404 too

    async def prepare(self) -> None:
        await super().prepare()
        raise PageError(404, "There is no page at this address.")


ROUTES = [
    (r"/login", LoginPage),
    (r"/logout", LogoutHandler),
    (r"/", HomePage),
    (r"/parcels/?", ClientParcelsPage),
    (r"/parcels/(\d{1,18})/track/?", TrackPage),
    (r"/driver/?", DriverParcelsPage),
    (r"/driver/parcels/(\d{1,18})/?", DriverParcelPage),
    (r"/dispatch/?", DispatchPage),
    (r"/dispatch/parcels/(\d{1,18})/assign", DispatchAssign),
    (r".*", NotFoundPage),  # last: every other address gets the 404 page
]
