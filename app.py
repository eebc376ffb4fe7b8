"""The parcel-tracking server: the Application, its routes, and the command line.

    python app.py serve [--host H] [--port P] [--data-dir D] [--no-demo]
    python app.py create-user --email E --password P --role R [--name N]
    python app.py create-parcel --owner EMAIL --pickup "LAT,LNG[,ADDR]" --destination "LAT,LNG[,ADDR]"
    python app.py assign PARCEL_ID DRIVER_EMAIL
    python app.py demo
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn

import jinja2
import pymongo
import tornado.httpserver
import tornado.ioloop
import tornado.log
import tornado.web
from pymongo.errors import PyMongoError

import settings as settings_module
from auth import passwords
from auth.throttle import LoginThrottle
from handlers import api, fleet, intake, integrations, openapi, ops, pages, people, proofs, tracking, unsubscribe
from handlers.base import ApiNotFound, StaticFiles, loggable_path
from models import demo, geo, mail, parcels, shares, users
from models.access import ROLES, may_drive, may_own_parcels
from models.db import ID, Database, DatabaseUnavailable, parse_id, utcnow
from models.embedded import STOP_TIMEOUT, EmbeddedDatabase, EmbeddedDatabaseError
from models.locations import SampleWriter
from models.lookups import Lookups
from models.outbox import Outbox
from models.webhooks import Webhooks
from realtime.broker import BrokerUnavailable
from realtime.events import Events
from realtime.hub import Hub
from realtime.limits import Limits
from realtime.metrics import Metrics
from realtime.notifications import Notifications
from settings import Settings, SettingsError

HERE = Path(__file__).resolve().parent
SUPERVISE_EVERY = 1.0  # seconds between two looks at the embedded database
RESTARTS_PER_MINUTE = 3
# SIGTERM starts one budget for the whole shutdown (exit within the 10 s a process manager gives,
# two seconds of it kept for the process to end on a loaded machine): closing connections, then
# writing what is queued, then stopping the embedded database, each taking from what is left.
SHUTDOWN_WITHIN = 8.0
CLOSE_CONNECTIONS_WITHIN = 2.0
# Kept from the writing for what follows it: the database client closing (at most CLOSE_CLIENT_WITHIN),
# then the embedded database stopping (about 2 s; past the budget it is killed).
DATABASE_STOP_RESERVE = 3.0
CLOSE_CLIENT_WITHIN = 1.0
EVENTS_WITHIN = 0.5  # seconds the events being recorded (realtime/events.py) are waited for at shutdown
OUTBOX_WITHIN = 1.0  # seconds the sends under way (models/outbox.py) get at shutdown, while the events drain
log = logging.getLogger("parcel")


class Application(tornado.web.Application):
    """Routes and settings; owns the database handle, the metrics, the sample writer, the hub
    and the login throttle."""

    def __init__(self, config: Settings, mongodb_uri: str) -> None:
        self.config = config
        self.db = open_database(config, mongodb_uri)
        self.metrics = Metrics()
        self.events = Events()
        # E-mails and webhooks go through the outbox (models/outbox.py), never on the live path.
        self.outbox = Outbox(self.db, self.metrics, backoff=config.outbox_backoff, poll_every=config.outbox_poll_every)
        self.outbox.register("email", mail.Mailer(self.db, config).send)
        self.notifications = Notifications(self.db, config, self.outbox)
        self.events.listen(self.notifications)
        # Webhooks (models/webhooks.py): each event queued per subscribed hook, sent by the outbox.
        self.webhooks = Webhooks(self.db, production=config.production, wake=self.outbox.wake)
        self.events.listen(self.webhooks.record)
        self.outbox.register("webhook", self.webhooks.send)
        self.writer = SampleWriter(self.db, config.sample_flush_interval, config.sample_queue_max,
                                   parcel_interval=config.last_location_interval)
        self.hub = Hub(self.db, self.writer, self.metrics, self.events, sample_every=config.location_sample_every,
                       broker_url=config.broker_url, state_ttl=config.parcel_state_ttl,
                       shutdown_timeout=config.shutdown_timeout, geofence_radius_m=config.geofence_radius_m,
                       arriving_within=config.notify_arriving_minutes * 60)
        self.metrics.watch(open_sockets=self.hub.open_sockets, samples=self.writer)
        self.retention = tornado.ioloop.PeriodicCallback(self.prune_locations, config.retention_interval * 1000)
        self.login_throttle = LoginThrottle(config.login_max_failures, config.login_failure_window)
        self.limits = Limits(config.user_messages_per_second, config.user_sockets, config.address_sockets)
        self.drivers = users.Directory(self.db, "driver")
        self.lookups = Lookups(self.db, config.database_deadline)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        parcel = user = f"({ID})"
        routes = [
            (r"/ws/tracking/?", tracking.TrackingSocket),
            (r"/ws/driver/?", fleet.RouteSocket),
            (r"/ws/dispatch/?", fleet.BoardSocket),
            (r"/healthz/?", ops.HealthHandler),
            (r"/metrics/?", ops.MetricsHandler),
            (r"/api/token/?", api.TokenHandler),
            (r"/api/token/refresh/?", api.RefreshHandler),
            (r"/api/token/ws/?", api.SocketTokenHandler),
            (r"/api/me/?", api.MeHandler),
            (r"/api/me/password/?", api.PasswordHandler),
            (r"/api/users/?", people.PeopleHandler),
            (rf"/api/users/{user}/role/?", api.RoleHandler),
            (rf"/api/users/{user}/deactivate/?", people.ActiveHandler, {"active": False}),
            (rf"/api/users/{user}/activate/?", people.ActiveHandler, {"active": True}),
            (r"/api/parcels/?", api.ParcelsHandler),
            (r"/api/parcels/import/?", intake.ImportHandler),
            (rf"/api/parcels/{parcel}/?", api.ParcelHandler),
            (rf"/api/parcels/{parcel}/assign/?", api.AssignHandler),
            (rf"/api/parcels/{parcel}/status/?", api.StatusHandler),
            (rf"/api/parcels/{parcel}/locations/?", api.LocationsHandler),
            (rf"/api/parcels/{parcel}/share/?", api.ShareHandler),
            (rf"/api/parcels/{parcel}/proof/?", proofs.ProofHandler),
            (rf"/api/parcels/{parcel}/proof/(photo|signature)/?", proofs.ProofImageHandler),
            (rf"/api/drivers/{user}/route/?", api.RouteHandler),
            (r"/api/keys/?", integrations.KeysHandler),
            (rf"/api/keys/({ID})/?", integrations.KeyHandler),
            (r"/api/webhooks/?", integrations.WebhooksHandler),
            (rf"/api/webhooks/({ID})/?", integrations.WebhookHandler),
            (rf"/api/webhooks/({ID})/deliveries/?", integrations.DeliveriesHandler),
            (r"/api/openapi\.json", openapi.OpenApiHandler),
            (r"/api/.*", ApiNotFound),
            (r"/login", pages.LoginPage),
            (r"/logout", pages.LogoutHandler),
            (r"/", pages.HomePage),
            (r"/parcels/?", pages.ClientParcelsPage),
            (rf"/parcels/{parcel}/track/?", pages.TrackPage),
            (r"/driver/?", pages.DriverParcelsPage),
            (rf"/driver/parcels/{parcel}/?", pages.DriverParcelPage),
            (r"/dispatch/?", pages.DispatchPage),
            (rf"/dispatch/parcels/{parcel}/assign", pages.DispatchAssign),
            (rf"/dispatch/parcels/{parcel}/move", pages.DispatchMove),
            (r"/dispatch/parcels/new/?", intake.NewParcelPage),
            (r"/dispatch/import/?", intake.ImportPage),
            (r"/dispatch/people/?", people.PeoplePage),
            (rf"/dispatch/people/{user}/deactivate", people.PersonActivePage, {"active": False}),
            (rf"/dispatch/people/{user}/activate", people.PersonActivePage, {"active": True}),
            (r"/dispatch/integrations/?", integrations.IntegrationsPage),
            (r"/dispatch/integrations/keys", integrations.NewKeyPage),
            (rf"/dispatch/integrations/keys/({ID})/revoke", integrations.RevokeKeyPage),
            (r"/dispatch/integrations/webhooks", integrations.NewWebhookPage),
            (rf"/dispatch/integrations/webhooks/({ID})/delete", integrations.DeleteWebhookPage),
            (r"/t/([A-Za-z0-9_.\-]{1,2048})/locations/?", api.SharedLocationsHandler),
            (r"/t/([A-Za-z0-9_.\-]{1,2048})/proof/?", proofs.SharedProofHandler),
            (r"/t/([A-Za-z0-9_.\-]{1,2048})/proof/(photo|signature)/?", proofs.SharedProofImageHandler),
            (r"/t/[^/]*/(?:locations|proof)(?:/.*)?", ApiNotFound),  # a link's JSON with no such token: JSON 404
            (r"/t/([A-Za-z0-9_.\-]{1,2048})/?", pages.SharePage),
            (r"/u/([A-Za-z0-9_\-]{16,64})/?", unsubscribe.UnsubscribePage),
            (r".*", pages.NotFoundPage),  # last: every other address gets the 404 page
        ]
        super().__init__(
            routes,
            cookie_secret=config.secret_key,
            xsrf_cookies=True,
            xsrf_cookie_kwargs={"samesite": "Lax"},
            login_url="/login",
            static_path=str(HERE / "static"),
            static_handler_class=StaticFiles,
            compress_response=True,  # gzip for text, JS, JSON, SVG asked with Accept-Encoding; sockets are untouched
            websocket_ping_interval=config.ws_ping_interval,
            websocket_ping_timeout=config.ws_ping_timeout,
            websocket_max_message_size=settings_module.WEBSOCKET_MAX_BATCH_SIZE,  # others: 4 KiB (handlers/sockets.py)
            log_function=log_request,
            debug=config.debug,
        )

    async def start(self) -> None:
        await self.db.ensure_indexes()
        await self.hub.start()
        await self.outbox.start()
        await self.prune_locations()
        self.retention.start()

    async def stop(self, within: float | None = None) -> None:
        """Stop in order; writing what is queued takes at most `within` seconds (and at most
        Settings.shutdown_timeout)."""
        self.retention.stop()
        if within is not None:  # the events and the outbox stop first, together, within OUTBOX_WITHIN
            within = max(0.0, within - OUTBOX_WITHIN)
            self.hub.shutdown_timeout = min(self.hub.shutdown_timeout, within)  # what hub.stop() drains within
        await asyncio.gather(self.events.drain(EVENTS_WITHIN), self.outbox.stop(OUTBOX_WITHIN))
        await self.hub.stop()
        with pymongo.timeout(CLOSE_CLIENT_WITHIN):  # PyMongo says goodbye (endSessions), even to a frozen database
            await self.db.close()

    async def prune_locations(self) -> None:
        """Delete samples past LOCATION_RETENTION_DAYS and expired share links (indexed deletes; see models.db)."""
        try:
            if deleted := await self.db.prune_locations():
                log.info("deleted %d location samples past their retention", deleted)
            if gone := await shares.prune(self.db, utcnow()):
                log.info("deleted %d expired share links", gone)
        except PyMongoError as e:
            log.warning("could not delete old location samples: %s", e)


def open_database(config: Settings, uri: str) -> Database:
    """The configured database, for the server and every command alike. The embedded server
    (no MONGODB_URI) gets no TTL index: see Database._retention_index."""
    return Database(uri, config.mongodb_db, config.location_retention_days, ttl_index=bool(config.mongodb_uri))


def make_app(config: Settings, mongodb_uri: str | None = None) -> Application:
    """Build the app for `serve` and for every test alike (call `start()` inside its IOLoop)."""
    return Application(config.with_secret(), mongodb_uri or config.mongodb_uri)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log, but with the path only (a socket's URL carries its token), and
    without a share link's token: `/t/[token]/locations`."""
    status = handler.get_status()
    method = tornado.log.access_log.info if status < 400 else tornado.log.access_log.warning
    if status >= 500:
        method = tornado.log.access_log.error
    request = handler.request
    method("%d %s %s (%s) %.2fms", status, request.method, loggable_path(request.path), request.remote_ip,
           1000.0 * request.request_time())


# -- the command line ------------------------------------------------------------


class UsageError(Exception):
    """Bad arguments: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class Deadline:
    """A budget of seconds that steps take from in turn, running from `start()`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends: float | None = None

    def start(self) -> None:
        self.ends = time.monotonic() + self.seconds

    def left(self, keep: float = 0.0) -> float:
        """Seconds left, less `keep` for later steps (the whole budget, if it has not started)."""
        ends = time.monotonic() + self.seconds if self.ends is None else self.ends
        return max(0.0, ends - time.monotonic() - keep)


@asynccontextmanager
async def database_uri(config: Settings,
                       shutdown: Deadline | None = None) -> AsyncIterator[tuple[str, EmbeddedDatabase | None]]:
    """MONGODB_URI, or the embedded database's (started or joined, and left on the way out:
    stopped within what is left of `shutdown`, if given, and killed past it)."""
    if config.mongodb_uri:
        yield config.mongodb_uri, None
        return
    embedded = EmbeddedDatabase(config.data_dir)
    uri = await asyncio.to_thread(embedded.start)
    try:
        yield uri, embedded
    finally:
        await asyncio.to_thread(embedded.stop, shutdown.left() if shutdown else STOP_TIMEOUT)


@asynccontextmanager
async def database(config: Settings) -> AsyncIterator[Database]:
    """The configured database, its indexes in place, for one command."""
    async with database_uri(config) as (uri, _):
        db = open_database(config, uri)
        try:
            await db.ensure_indexes()
            yield db
        finally:
            await db.close()


def read_password(args: argparse.Namespace) -> str:
    """--password, or one line from standard input with --password-stdin, or a prompt at a
    terminal: a password on the command line is visible to everyone on the machine (ps)."""
    if args.password is not None and args.password_stdin:
        raise UsageError("give --password or --password-stdin, not both")
    if args.password is not None:
        return args.password
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    raise UsageError("a password is required: --password-stdin, or run it at a terminal to be asked")


async def create_user(config: Settings, args: argparse.Namespace) -> None:
    try:
        users.check_email(args.email)
    except users.InvalidEmail as e:
        raise UsageError(f"--{e}") from None
    password = read_password(args)
    if problem := passwords.check_length(password):
        raise UsageError(problem)
    password_hash = await passwords.hash_password(password, config.bcrypt_rounds)
    async with database(config) as db:
        try:
            user = await users.create_user(db, email=args.email, password_hash=password_hash,
                                           role=args.role, name=args.name or "")
        except users.EmailTaken:
            raise UsageError(f"a user with email {args.email} exists already") from None
    print(user.id)


async def create_parcel(config: Settings, args: argparse.Namespace) -> None:
    try:
        pickup = geo.parse_point_text(args.pickup, "--pickup")
        destination = geo.parse_point_text(args.destination, "--destination")
    except geo.InvalidLocation as e:
        raise UsageError(str(e)) from None
    async with database(config) as db:
        found = await users.find_by_email(db, args.owner)
        if not may_own_parcels(found and found[0]):
            raise UsageError(f"--owner must be a client's email; {args.owner} is not")
        parcel = await parcels.create_parcel(db, owner_id=found[0].id, pickup=pickup, destination=destination)
    print(parcel["_id"])


async def assign(config: Settings, args: argparse.Namespace) -> None:
    parcel_id = parse_id(args.parcel_id.strip())
    if parcel_id is None:
        raise UsageError(f"PARCEL_ID must be a parcel's number, not {args.parcel_id[:40]!r}")
    async with database(config) as db:
        found = await users.find_by_email(db, args.driver_email)
        if not may_drive(found and found[0]):
            raise UsageError(f"{args.driver_email} is not a driver's email")
        if await parcels.get_parcel(db, parcel_id) is None:
            raise UsageError(f"there is no parcel {parcel_id}")
        try:
            await parcels.assign_driver(db, parcel_id, found[0].id)
        except parcels.TransitionRefused as e:
            raise UsageError(str(e)) from None
    print(f"parcel {parcel_id} assigned to {found[0].email}")


async def ensure_demo_data(db: Database, config: Settings) -> bool:
    """Create the demo data unless it is there; True if created."""
    if await demo.present(db):
        return False
    return await demo.create_demo_data(db, await passwords.hash_password(demo.PASSWORD, config.bcrypt_rounds))


async def demo_data(config: Settings, args: argparse.Namespace) -> None:
    if config.production:
        raise UsageError("no demo data with APP_ENV=production: its accounts have a published password")
    async with database(config) as db:
        created = await ensure_demo_data(db, config)
    print("demo data created" if created else "demo data already present")
    print_logins()


def print_logins() -> None:
    print(f"demo logins (password for all: {demo.PASSWORD}):")
    for email, _, role in demo.logins():
        print(f"  {role:<10} {email}")


async def serve(config: Settings, args: argparse.Namespace) -> None:
    config = config.with_secret()
    shutdown = Deadline(SHUTDOWN_WITHIN)  # started by run_server on SIGTERM
    async with database_uri(config, shutdown) as (uri, embedded):
        app = make_app(config, uri)
        try:
            await run_server(app, args, shutdown, embedded)
        finally:
            await app.stop(within=shutdown.left(keep=DATABASE_STOP_RESERVE))


async def supervise(embedded: EmbeddedDatabase, stop: asyncio.Event) -> None:
    """Restart the embedded database if it dies, on the same port (the app reconnects and the
    queued samples land); more than RESTARTS_PER_MINUTE deaths a minute stop the server, which
    then exits with status 1 so that its own supervisor (systemd, a container) sees it."""
    restarts: deque[float] = deque()  # when it was restarted within the last minute
    while not stop.is_set():
        await asyncio.sleep(SUPERVISE_EVERY)
        if await asyncio.to_thread(embedded.alive):
            continue
        now = time.monotonic()
        while restarts and restarts[0] < now - 60:
            restarts.popleft()
        if len(restarts) >= RESTARTS_PER_MINUTE:
            raise EmbeddedDatabaseError(f"the embedded database died {len(restarts) + 1} times within a minute")
        restarts.append(now)
        log.warning("the embedded database died; restarting it")
        await asyncio.to_thread(embedded.revive)  # EmbeddedDatabaseError if it cannot
        log.info("the embedded database is back")


async def run_server(app: Application, args: argparse.Namespace, shutdown: Deadline,
                     embedded: EmbeddedDatabase | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then start the shutdown's budget and close sockets and
    connections in order."""
    config = app.config
    await app.start()
    with_demo = not args.no_demo and not config.production  # its accounts have a published password
    if with_demo and await ensure_demo_data(app.db, config):
        log.info("created the demo data")
    server = tornado.httpserver.HTTPServer(
        app, xheaders=False, max_body_size=1024 * 1024, idle_connection_timeout=60
    )
    try:
        server.listen(args.port, args.host)
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    if not config.public_url:  # the e-mails' links point here, unless PUBLIC_URL says where the recipient reaches it
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        app.notifications.base_url = f"http://{host}:{args.port}"
    tune_gc()
    print(f"parcel tracking is running on http://{args.host}:{args.port}/", flush=True)
    if with_demo:
        print_logins()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.ensure_future(supervise(embedded, stop)) if embedded is not None else None
    waiting = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([w for w in (watcher, waiting) if w], return_when=asyncio.FIRST_COMPLETED)
    failed = watcher is not None and watcher in done
    for task in (watcher, waiting):
        if task is not None and not task.done():
            task.cancel()
    shutdown.start()
    log.info("stopping")
    server.stop()
    app.hub.close_all()
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=CLOSE_CONNECTIONS_WITHIN)
    except TimeoutError:
        log.warning("some connections did not close within %s s", CLOSE_CONNECTIONS_WITHIN)
    if failed:
        watcher.result()  # the supervisor's EmbeddedDatabaseError (exit status 1), once stopped in order


COMMANDS = {"serve": serve, "create-user": create_user, "create-parcel": create_parcel,
            "assign": assign, "demo": demo_data}


def port_number(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, not {text[:20]!r}")
    return int(text)


def build_parser() -> Parser:
    parser = Parser(prog="app.py", description="Realtime parcel tracking.")
    parser.add_argument("--data-dir", help="where the embedded database and secret live (DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = Parser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS)
    s = sub.add_parser("serve", parents=[common], help="run the server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port_number, default=8000)
    s.add_argument("--no-demo", action="store_true", help="do not create demo data")
    u = sub.add_parser("create-user", parents=[common], help="create an account")
    u.add_argument("--email", required=True)
    u.add_argument("--password", help="visible to other users of the machine; prefer --password-stdin")
    u.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    u.add_argument("--role", required=True, choices=ROLES)
    u.add_argument("--name", default="")
    p = sub.add_parser("create-parcel", parents=[common], help="create a parcel for a client")
    p.add_argument("--owner", required=True, help="the client's email")
    p.add_argument("--pickup", required=True, help='"LAT,LNG[,ADDRESS]"')
    p.add_argument("--destination", required=True, help='"LAT,LNG[,ADDRESS]"')
    a = sub.add_parser("assign", parents=[common], help="assign a parcel to a driver")
    a.add_argument("parcel_id")
    a.add_argument("driver_email")
    sub.add_parser("demo", parents=[common], help="create the demo data if missing")
    return parser


GC_THRESHOLDS = (20_000, 20, 100)  # Python's default: (700, 10, 10)


def tune_gc() -> None:
    """Keep the cyclic garbage collector's full passes rare and short (README, "Performance").

    Every broadcast allocates a few short-lived dicts; with the default thresholds they set
    off a full collection every few seconds under load, each walking every object of every
    open socket (220 ms at 3,000 sockets, measured, finding nothing: reference counting frees
    them) and holding every broadcast meanwhile. The objects made at start-up are frozen out
    of those walks for good; closed sockets' cycles still go at the next full pass."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def use_uvloop() -> bool:
    """Run the server on uvloop when it is installed (README, "Performance"); UVLOOP=0 turns it off."""
    if os.environ.get("UVLOOP", "") == "0":
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main(argv: list[str] | None = None) -> int:
    tornado.log.enable_pretty_logging()
    os.umask(0o077)  # the data dir, the secret, the database files: the owner's alone
    try:
        args = build_parser().parse_args(argv)
        config = Settings.from_env(data_dir=args.data_dir)
        if args.command == "serve":
            use_uvloop()
        asyncio.run(COMMANDS[args.command](config, args))
    except (UsageError, SettingsError) as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 2
    except (EmbeddedDatabaseError, DatabaseUnavailable, BrokerUnavailable) as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
