"""Processes that share the load (`make bench`'s redis case, issue 21; docs/protocol.md).

Two `app.py serve` behind one redis-server (BROKER_URL), as `fanout.redis_pair` runs them:
the quiet process holds only sockets watching 10 parcels (3 watchers each) that nobody
moves; the busy one carries the drivers of 250 other parcels at 8 Hz = 2,000 location
updates a second (under the 10 a second a socket may send) and a watcher of each. Over a
steady window after the sending has begun, each process's CPU (utime + stime from
/proc/<pid>/stat, as a share of one core), Redis's, and the commands Redis ran a second.
A process receiving every event of every process decodes all 2,000 a second it has no
socket for; one that subscribes per parcel receives nothing here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

from benchmarks import generator
from benchmarks.fixture import App, Fixture
from benchmarks.generator import CpuSampler

QUIET_PARCELS = 10
BUSY_PARCELS, BUSY_HZ = 250, 8
# Measured before the per-parcel subscriptions, when every process decoded every event (this machine, 2 cores;
# benchmarks/results/fanout-quick-redis-before.json).
BEFORE_SHARDED = "every process receiving every event, commit fcb8b01: 23.0 %"
WARMUP_S = 3  # after the first send, before the window opens (the connections' and the JIT-less warm-up)


class Watchers:
    """Sockets on the quiet process, each counting what it is sent by type."""

    def __init__(self) -> None:
        self.sockets: list[WebSocketClientConnection] = []
        self.received: Counter[str] = Counter()
        self.tasks: list[asyncio.Task] = []

    async def open(self, ws_url: str, parcels: list[dict[str, Any]], extra_token: str) -> None:
        for p in parcels:
            for token in [*p["viewer_tokens"], extra_token]:
                ws = await websocket_connect(f"{ws_url}?parcel_id={p['parcel_id']}&token={token}", connect_timeout=30)
                first = json.loads(await asyncio.wait_for(ws.read_message(), 30) or "{}")
                if first.get("type") != "subscribed":
                    raise RuntimeError(f"a watcher on the quiet process got {first!r}")
                self.sockets.append(ws)
                self.tasks.append(asyncio.ensure_future(self.read(ws)))

    async def read(self, ws: WebSocketClientConnection) -> None:
        while (raw := await ws.read_message()) is not None:
            self.received[json.loads(raw).get("type", "?")] += 1

    def open_count(self) -> int:
        return sum(not t.done() for t in self.tasks)

    async def close(self) -> None:
        for ws in self.sockets:
            ws.close()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)


def redis_stats(url: str) -> dict[str, Any]:
    """Redis's counters: commands (a Lua script's own calls included), bytes, and calls by command."""
    import redis  # installed with the app

    client = redis.Redis.from_url(url)
    try:
        info, commands = client.info("stats"), client.info("commandstats")
    finally:
        client.close()
    return {**{k: int(info[k]) for k in ("total_commands_processed", "total_net_output_bytes",
                                         "total_net_input_bytes")},
            "calls": {name.removeprefix("cmdstat_"): int(c["calls"]) for name, c in commands.items()}}


async def idle_process(args: Any, quiet: App, busy: App, redis_url: str, redis_pid: int, fx: Fixture,
                       scratch: Path, window_s: float, viewers: int = 1) -> dict[str, Any]:
    """The quiet process's CPU while the busy one carries 2,000 updates a second for other parcels
    (each watched there by `viewers` sockets)."""
    await asyncio.gather(quiet.wait_idle(), busy.wait_idle())
    pids = {"quiet": quiet.pid, "busy": busy.pid, "redis": redis_pid, "db": quiet.db_pid}
    watchers = Watchers()
    await watchers.open(quiet.ws_url, fx.parcels[-QUIET_PARCELS:], fx.dispatcher_token)
    print(f"   quiet process (pid {quiet.pid}): {len(watchers.sockets)} sockets watching {QUIET_PARCELS} parcels; "
          f"busy process (pid {busy.pid}): {BUSY_PARCELS} drivers × {BUSY_HZ} Hz = {BUSY_PARCELS * BUSY_HZ:,}/s "
          f"and {viewers} watcher(s) each")
    sending = asyncio.Event()
    with CpuSampler(pids) as sampler:
        # Nothing sent anywhere: what the quiet process costs with its sockets alone.
        await asyncio.sleep(1)
        t0 = time.monotonic()
        await asyncio.sleep(5)
        at_rest = sampler.share(t0, time.monotonic())
        path = fx.write(scratch / "fixture-busy.json", busy.ws_url, BUSY_PARCELS)
        run = asyncio.ensure_future(generator.run(
            ["--fixture", str(path), "--pid", ",".join(map(str, pids.values())), "--parcels", str(BUSY_PARCELS),
             "--viewers", str(viewers), "--rate", str(BUSY_HZ), "--duration", str(window_s + WARMUP_S + 1),
             "--p99-ms", "50", "--quiet-wait", str(args.quiet_wait), "--retry-noisy", "0",
             "--connect-concurrency", str(args.load_connect)],
            modules=args.modules, label="idle-process", sampler=sampler,
            on_line=lambda line: "] step 0:" in line and "msg/s for" in line and sending.set()))
        started = asyncio.ensure_future(sending.wait())
        await asyncio.wait([run, started], return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        window: dict[str, Any] = {}
        if sending.is_set():
            await asyncio.sleep(WARMUP_S)
            before = await asyncio.to_thread(redis_stats, redis_url)
            t0, received = time.monotonic(), watchers.received.copy()
            await asyncio.sleep(window_s)
            after, t1 = await asyncio.to_thread(redis_stats, redis_url), time.monotonic()
            seconds = t1 - t0
            window = {"seconds": round(seconds, 1), "cpu": sampler.share(t0, t1),
                      "redis_commands_per_s": round((after["total_commands_processed"]
                                                     - before["total_commands_processed"]) / seconds),
                      "redis_out_kib_per_s": round((after["total_net_output_bytes"]
                                                    - before["total_net_output_bytes"]) / seconds / 1024),
                      "redis_in_kib_per_s": round((after["total_net_input_bytes"]
                                                   - before["total_net_input_bytes"]) / seconds / 1024),
                      "redis_calls_per_s": {name: round((n - before["calls"].get(name, 0)) / seconds)
                                            for name, n in sorted(after["calls"].items(), key=lambda c: -c[1])
                                            if n - before["calls"].get(name, 0) >= seconds},
                      "quiet_sockets_received": dict(watchers.received - received)}
        reports = await run
    still_open = watchers.open_count()
    await watchers.close()
    steps = generator.latest_steps(reports)
    step = steps[-1] if steps else {}
    lat = step.get("latency_ms") or {}
    out = {"quiet_sockets": len(watchers.sockets), "quiet_parcels": QUIET_PARCELS, "busy_viewers": viewers,
           "quiet_sockets_still_open": still_open,
           "at_rest_cpu": at_rest, **window, "busy_target_rate": step.get("target_send_rate"),
           "busy_sent_per_s": step.get("achieved_send_rate"), "busy_p99_ms": lat.get("p99"),
           "busy_lost": step.get("lost"), "busy_errors": step.get("errors_received"), "noisy": step.get("noisy"),
           "foreign_cores": (step.get("machine") or {}).get("foreign_cores")}
    cpu = window.get("cpu") or {}
    if cpu:
        print(f"   over {window['seconds']} s of {out['busy_sent_per_s']}/s sent to the busy process (p99 "
              f"{out['busy_p99_ms']} ms, lost {out['busy_lost']}): quiet process {cpu['quiet']:.1%} of a core "
              f"(at rest before: {at_rest.get('quiet', 0):.1%}), busy process {cpu['busy']:.1%}, Redis "
              f"{cpu['redis']:.1%} ({window['redis_commands_per_s']:,} commands/s, out "
              f"{window['redis_out_kib_per_s']:,} KiB/s), database {cpu['db']:.1%}")
        print(f"   Redis's calls a second by command (a script's own included): {window['redis_calls_per_s']}")
        print(f"   the quiet process's sockets received {window['quiet_sockets_received'] or 'nothing'} meanwhile; "
              f"{still_open}/{len(watchers.sockets)} still open at the end; under ~5 % of a core: "
              f"{'HOLDS' if cpu['quiet'] is not None and cpu['quiet'] < 0.05 else 'NOT MET'}")
    else:
        print("   the busy process's load never started sending: no window measured")
    return out
