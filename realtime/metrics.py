"""What /metrics reports (docs/protocol.md, "Operating it"), through prometheus_client.

Counters and the latency histogram are kept as things happen; the current figures
(open sockets, samples queued) are read when Prometheus asks, through what the
application hands `watch` (the hub's `open_sockets`, the sample writer), so nothing is
counted twice. One registry per application, so that each app (and each test) has its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

OpenSockets = Callable[[], Mapping[tuple[str, str], int]]  # open sockets by (kind, role)


class SampleCounts(Protocol):
    """The sample writer's figures (models.locations.SampleWriter)."""

    @property
    def queued(self) -> int: ...

    written: int
    dropped: int
    errors: int


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages_in = Counter("parcel_messages_in", "Messages received on sockets", ["kind"],
                                   registry=self.registry)
        self.broadcasts_out = Counter("parcel_broadcasts_out", "Frames sent to subscribers", registry=self.registry)
        self.broadcast_latency = Histogram(
            "parcel_broadcast_latency_seconds", "From a location's acceptance until every subscriber's frame is out",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=self.registry)
        # resolved once: every message counts
        self.messages_by_kind = {kind: self.messages_in.labels(kind) for kind in ("tracking", "driver", "dispatch")}
        self.database_errors = Counter("parcel_database_errors", "Requests that found the database unavailable",
                                       registry=self.registry)
        # With BROKER_URL (realtime/broker.py): events delivered in this process only, while Redis was away.
        self.broker_unpublished = Counter("parcel_broker_unpublished", "Events that could not be published to the "
                                          "broker (delivered in this process only)", ["kind"], registry=self.registry)
        self.broker_outages = Counter("parcel_broker_outages", "Times the broker was lost", registry=self.registry)
        # The outbox (models/outbox.py): e-mails and webhooks sent, failed sends (tried again), given up after 24 h.
        self.outbox_sent = Counter("parcel_outbox_sent", "Outbox entries sent", ["kind"], registry=self.registry)
        self.outbox_failures = Counter("parcel_outbox_failures", "Outbox sends that failed and will be tried again",
                                       ["kind"], registry=self.registry)
        self.outbox_given_up = Counter("parcel_outbox_given_up", "Outbox entries given up after failing for 24 h",
                                       ["kind"], registry=self.registry)

    def watch(self, open_sockets: OpenSockets, samples: SampleCounts) -> None:
        """Report these open sockets and the sample writer's figures at every scrape."""
        self.registry.register(_Live(open_sockets, samples))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Live:
    """The figures read when Prometheus asks."""

    def __init__(self, open_sockets: OpenSockets, samples: SampleCounts) -> None:
        self.open_sockets = open_sockets
        self.samples = samples

    def describe(self) -> list[Metric]:
        return []  # unknown until collected: no name clash is possible with the counters above

    def collect(self) -> Iterator[Metric]:
        sockets = GaugeMetricFamily("parcel_sockets_open", "Open sockets", labels=["kind", "role"])
        for (kind, role), count in sorted(self.open_sockets().items()):
            sockets.add_metric([kind, role], count)
        yield sockets
        writer = self.samples
        yield GaugeMetricFamily("parcel_samples_queued", "Samples waiting to be written", value=writer.queued)
        yield CounterMetricFamily("parcel_samples_written", "Samples written to the history", value=writer.written)
        yield CounterMetricFamily("parcel_samples_dropped", "Samples dropped from a full queue", value=writer.dropped)
        yield CounterMetricFamily("parcel_sample_write_errors", "Failed writes of samples (retried when the "
                                  "database was unreachable)", value=writer.errors)
