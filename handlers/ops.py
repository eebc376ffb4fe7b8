"""Operating it (docs/protocol.md, "Operating it"): /healthz for load balancers and
supervisors, /metrics for Prometheus (loopback, or `Authorization: Bearer <METRICS_TOKEN>`; a request
that came through a proxy is not a loopback client, though the proxy connects from there)."""

from __future__ import annotations

import asyncio
import hmac
from ipaddress import ip_address

from tornado.httputil import HTTPServerRequest

from handlers.base import BaseHandler, Refused
from handlers.openapi import Answer, described, ref
from realtime.metrics import CONTENT_TYPE

HEALTH_TIMEOUT = 2.5  # seconds for each part to answer; /healthz answers within 3 s
PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


class HealthHandler(BaseHandler):
    """GET /healthz: 200 when the database (and the broker, if any) answer, else 503 naming what failed."""

    async def prepare(self) -> None:
        pass  # no login, no database lookup of a user: this must answer when the database does not

    @described("Whether the server and what it depends on answer (load balancers, supervisors)", public=True,
               database=False, responses={200: ref("Health"), 503: Answer(ref("Health"), "A part does not answer")})
    async def get(self) -> None:
        database, broker = await asyncio.gather(self._check(self.db.ping()), self._check(self.hub.broker.ping()))
        healthy = database == "ok" and broker in ("ok", "off")
        self.set_status(200 if healthy else 503)
        self.set_header("Cache-Control", "no-store")
        self.finish({"status": "ok" if healthy else "unavailable", "database": database, "broker": broker})

    @staticmethod
    async def _check(probe) -> str:
        try:
            answer = await asyncio.wait_for(probe, HEALTH_TIMEOUT)
        except Exception:  # unreachable, refused, frozen: all mean "not answering"
            return "unavailable"
        return "off" if answer is None else "ok"


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text, for loopback clients or with the METRICS_TOKEN."""

    async def prepare(self) -> None:
        await super().prepare()
        token = self.config.metrics_token
        header = self.request.headers.get("Authorization", "")
        if token and hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
            return
        if not _local(self.request):
            raise Refused(403, "metrics are for loopback clients or with the METRICS_TOKEN")

    async def _authenticate(self):  # a Bearer here is the metrics token, not a user's
        return None

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.application.hub.metrics.exposition())

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.finish({"error": exc.message if isinstance(exc, Refused) else self._reason.lower()})


def _local(request: HTTPServerRequest) -> bool:
    """A client on this machine: a loopback address, and no proxy's headers. A proxy on loopback
    (nginx) passes on requests from anywhere, with or without TRUSTED_PROXIES."""
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    try:
        return ip_address(request.remote_ip or "").is_loopback
    except ValueError:
        return False

