"""Settings: every knob of the README's "Configuration", read once from the environment.

`Settings.from_env()` is the only place that reads `os.environ`; everything else
receives a `Settings` object, so tests build one with plain keyword overrides.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.utils import parseaddr
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_TILE_URL = "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png"

WEBSOCKET_MAX_MESSAGE_SIZE = 4 * 1024  # bytes; a larger frame closes with 1009
WEBSOCKET_MAX_BATCH_SIZE = 64 * 1024  # bytes; the one exception: a location_batch frame
MAX_API_BODY_SIZE = 64 * 1024  # bytes; a larger JSON body gets 413
MAX_IMPORT_BODY_SIZE = 2 * 1024 * 1024  # bytes; a CSV import (POST /api/parcels/import/) may be this large
STREAMED_BODY_LIMIT = 16 * 1024 * 1024  # bytes of an API body read (and dropped) before the connection is cut


class SettingsError(ValueError):
    """A setting has a value the app cannot run with."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./data")
    mongodb_uri: str = ""
    mongodb_db: str = "parcel_tracking"
    secret_key: str = ""
    app_env: str = "development"
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    location_sample_every: int = 5
    broker_url: str = ""
    metrics_token: str = ""
    database_deadline: float = 2.5  # seconds a request may wait for the database before it answers 503
    public_ws_url: str = ""
    tile_url: str = DEFAULT_TILE_URL
    access_token_ttl: int = 900
    refresh_token_ttl: int = 604800
    ws_token_ttl: int = 60
    bcrypt_rounds: int = 12
    login_max_failures: int = 5
    login_failure_window: int = 300
    sample_flush_interval: float = 0.25
    sample_queue_max: int = 100_000
    last_location_interval: float = 5.0  # seconds; a parcel's last_location is rewritten at most this often
    location_retention_days: int = 90
    share_link_ttl: int = 172_800  # seconds a share link lives (at most until an hour after the parcel finished)
    business_name: str = "Parcel Tracking"  # the name a share link's page shows its recipient
    geofence_radius_m: float = 150.0
    # E-mail to the recipient (docs/protocol.md, "E-mail to the recipient"): without smtp_url none is
    # sent, and the server logs one line per e-mail it would have sent.
    smtp_url: str = ""  # smtp://[user:password@]host:port, or smtps://
    smtp_from: str = ""  # the address the e-mails come from
    public_url: str = ""  # the server's address as the recipient reaches it: the e-mails' links start with it
    notify_arriving_minutes: int = 10  # "arriving soon" once the ETA to the destination is under this
    outbox_backoff: float = 10.0  # seconds before the outbox's first retry (doubled each time); tests shrink it
    outbox_poll_every: float = 5.0  # seconds between two looks for outbox entries due (models/outbox.py)
    retention_interval: float = 3600.0  # seconds between two passes deleting expired samples
    shutdown_timeout: float = 7.0  # seconds SIGTERM may spend writing what is queued (see app.py)
    parcel_state_ttl: float = 5.0  # see realtime.hub.Hub
    ws_ping_interval: float = 25.0  # seconds; Tornado sends no pings unless this is set
    ws_ping_timeout: float = 20.0  # seconds without a pong before a socket is closed (≤ the interval)
    # The sockets' limits (docs/security.md, "Limits"); no environment variable sets them,
    # they are fields so that tests can shrink them with `@settings(...)`.
    rate_limit: int = 10  # location messages a second, one socket
    user_messages_per_second: int = 20  # location messages a second, all of a user's sockets together
    user_sockets: int = 100  # open at once (a dispatcher watching many parcels one socket each)
    address_sockets: int = 1000  # open at once from one address (a depot's phones may share one); loopback is exempt
    max_unsent: int = 1024 * 1024  # bytes waiting for one subscriber before it is closed (1008)
    debug: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Read the environment (the defaults are the README's), then apply overrides."""
        env = os.environ if env is None else env
        values = dict(
            data_dir=Path(env.get("DATA_DIR") or "./data"),
            mongodb_uri=env.get("MONGODB_URI", "").strip(),
            mongodb_db=env.get("MONGODB_DB", "").strip() or "parcel_tracking",
            secret_key=env.get("SECRET_KEY", ""),
            app_env=env.get("APP_ENV", "").strip() or "development",
            allowed_origins=_origins(env.get("ALLOWED_ORIGINS", "")),
            trusted_proxies=_networks(env.get("TRUSTED_PROXIES", "")),
            location_sample_every=_positive_int(env, "LOCATION_SAMPLE_EVERY", 5),
            broker_url=env.get("BROKER_URL", "").strip(),
            metrics_token=env.get("METRICS_TOKEN", "").strip(),
            public_ws_url=env.get("PUBLIC_WS_URL", "").strip().rstrip("/"),
            tile_url=env.get("TILE_URL", "").strip() or DEFAULT_TILE_URL,
            access_token_ttl=_positive_int(env, "ACCESS_TOKEN_TTL", 900),
            refresh_token_ttl=_positive_int(env, "REFRESH_TOKEN_TTL", 604800),
            bcrypt_rounds=_positive_int(env, "BCRYPT_ROUNDS", 12),
            sample_queue_max=_positive_int(env, "SAMPLE_QUEUE_MAX", 100_000),
            location_retention_days=_positive_int(env, "LOCATION_RETENTION_DAYS", 90),
            share_link_ttl=_positive_int(env, "SHARE_LINK_TTL", 172_800),
            business_name=" ".join(env.get("BUSINESS_NAME", "").split())[:80] or "Parcel Tracking",
            geofence_radius_m=float(_positive_int(env, "GEOFENCE_RADIUS_M", 150)),
            smtp_url=env.get("SMTP_URL", "").strip(),
            smtp_from=env.get("SMTP_FROM", "").strip(),
            public_url=env.get("PUBLIC_URL", "").strip().rstrip("/"),
            notify_arriving_minutes=_positive_int(env, "NOTIFY_ARRIVING_MINUTES", 10),
            debug=env.get("DEBUG", "") in ("1", "true", "yes"),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values["data_dir"], str):
            values["data_dir"] = Path(values["data_dir"])
        settings = cls(**values)
        if settings.broker_url and not settings.broker_url.startswith(("redis://", "rediss://")):
            raise SettingsError("BROKER_URL must be empty or a redis:// URL")
        if not 4 <= settings.bcrypt_rounds <= 16:
            raise SettingsError("BCRYPT_ROUNDS must be between 4 and 16")
        _check_email_settings(settings)
        return settings

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    def with_secret(self) -> Settings:
        """Return settings whose secret key is set: from SECRET_KEY, or generated once
        into `<data-dir>/secret_key` (refused in production, where it must be given)."""
        if self.secret_key:
            return self
        if self.production:
            raise SettingsError("SECRET_KEY must be set when APP_ENV=production")
        return replace(self, secret_key=_load_or_create_secret(self.data_dir / "secret_key"))


def smtp_server(url: str) -> SmtpServer:
    """SMTP_URL's parts: `smtp://[user:password@]host[:port]` (STARTTLS when the server offers
    it; port 587 by default) or `smtps://` (TLS from the start; port 465). SettingsError if it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise SettingsError("SMTP_URL must be smtp://[user:password@]host:port or smtps://…, "
                            f"not {_redacted(url)!r}")
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 587)
    except ValueError:
        raise SettingsError(f"SMTP_URL has no valid port: {_redacted(url)!r}") from None
    return SmtpServer(parts.hostname, port, parts.scheme == "smtps", unquote(parts.username or ""),
                      unquote(parts.password or ""))


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    tls: bool  # smtps: TLS from the start
    username: str
    password: str


def _redacted(url: str) -> str:
    """A URL as an error may show it: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url[:200]
    return url.replace(f":{parts.password}@", ":…@", 1)[:200]


def _check_email_settings(settings: Settings) -> None:
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise SettingsError(f"PUBLIC_URL must be an http:// or https:// address, not {settings.public_url[:100]!r}")
    if not settings.smtp_url:
        return
    smtp_server(settings.smtp_url)
    _, address = parseaddr(settings.smtp_from)
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
        raise SettingsError("SMTP_FROM must be the address the e-mails come from (name@example.com) when "
                            "SMTP_URL is set")
    if settings.production and not settings.public_url:
        raise SettingsError("PUBLIC_URL must be set with SMTP_URL when APP_ENV=production: the e-mails' links "
                            "start with it")


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip())


def _networks(raw: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """TRUSTED_PROXIES: addresses or networks (`127.0.0.1`, `10.0.0.0/8`), comma-separated."""
    try:
        return tuple(ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())
    except ValueError as e:
        raise SettingsError(f"TRUSTED_PROXIES: {e}") from None


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if value < 1:
        raise SettingsError(f"{name} must be at least 1")
    return value


def _load_or_create_secret(path: Path) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
    else:
        secret = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
    if len(secret) < 32:
        raise SettingsError(f"{path} holds no usable secret; delete it to make a new one")
    return secret
