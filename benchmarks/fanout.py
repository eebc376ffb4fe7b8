"""Fan-out at the machine's limit (`make bench`, issue 12).

One `python app.py serve --no-demo --data-dir <tmp>` with everything on (auth, validation,
sampling every 5th update) and its embedded database, driven from a separate process by
the reference load generator (`../shared/bench/loadgen.js`, Node + `ws`). Users, parcels
and tokens are made in its database with the product's models (`benchmarks/fixture.py`).

0. the generator's own ceiling against `null_server.js` (a server that does nothing): it
   must reach twice the target (8,000 updates/s) for the figures below to mean anything;
1. the sweep: 1,000 parcels × (driver + 2 viewers) = 3,000 sockets at rising rates: p50/p99/max,
   loss, the app's and the database's CPU; target ≥ 4,000 updates/s at p99 < 50 ms, none lost;
2. 200 parcels × 8 Hz = 1,600 updates/s, then the same with 20 subscribers that never read;
3. handshakes a second: 1,002 authenticated sockets, 100 in flight, until `subscribed`;
4. the dispatcher's board (`/ws/dispatch/`) beside 1,000 parcels at 1 Hz: its latency, and
   one update per parcel per second at 4 Hz;
5. 10,002 sockets (3,334 parcels) on a freshly started process: memory per socket (app +
   database RSS growth), held 10 s, then 1 update/s per driver;
5b. a reconnect storm: the same sockets at once, no pacing, on a freshly started process:
   every one subscribed, none refused, and when the last one was;
6. two processes behind one Redis (`BROKER_URL`): drivers on one, viewers on the other;
7. (with `--profile PY_SPY`) py-spy on the app and the database under 1,000 parcels × 3 Hz.

Writes benchmarks/results/fanout.json, fanout.png (latency against load) and fanout.md (the
summary). The machine is shared and noisy: compare ratios within one run; loadgen flags a
step `noisy` when other processes used the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import generator  # noqa: E402
from benchmarks.fixture import App, Fixture, seed  # noqa: E402
from benchmarks.generator import CpuSampler, Report, find, latest_steps, rss_kib  # noqa: E402
from benchmarks.plot import plot  # noqa: E402
from benchmarks.scaleout import BEFORE_SHARDED, BUSY_HZ, BUSY_PARCELS, idle_process  # noqa: E402
from devtools.process import RedisServer, app_env, free_port  # noqa: E402
from models.db import parse_iso  # noqa: E402
from settings import Settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATE = 4000
BUDGET_MS = 50
SEED = {  # issue 12: Django Channels + daphne, same machine and generator (200 parcels, p99 < 100 ms)
    "sustained": "100", "handshakes": "~200", "memory": "~40 KB (6,000 sockets)", "ten_thousand": "resets",
}
CASES = ("null", "sweep", "rate200", "slow", "handshakes", "board", "10k", "storm", "redis")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter steps, fewer of them (about 4 minutes)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--rates", help="sweep rates, Hz per driver (default 0.5,1,2,3,4,5,6; quick 1,2,4)")
    p.add_argument("--duration", type=float, help="seconds of sending per step (default 8; quick 5)")
    p.add_argument("--profile", metavar="PY_SPY", help="py-spy binary: profile the app and the database "
                   "under 1,000 parcels x 3 Hz")
    p.add_argument("--profile-rate", type=float, default=3.0)
    p.add_argument("--quiet-wait", type=float, default=5, help="seconds a step may wait for other processes' "
                   "load to drop below 0.25 core (loadgen's --quiet-wait; default 5)")
    p.add_argument("--load-connect", type=int, default=20, help="handshakes in flight while a load case connects "
                   "(default 20; the handshake case uses 100)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(args.cases) - set(CASES):
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    args.rates = args.rates or ("1,2,4" if args.quick else "0.5,1,2,3,4,5,6")
    args.duration = args.duration or (5 if args.quick else 8)
    return args


async def load(args: argparse.Namespace, path: Path, label: str, pids: str, *extra: str, paced: bool = True,
               **options: Any) -> list[Report]:
    """loadgen over the fixture at `path`, watching `pids`. `paced`, a load case: the p99 budget,
    a little wait for other people's load to drop before a step, a failing noisy step rerun once,
    and `--load-connect` handshakes in flight. `extra` comes last and wins."""
    flags = ["--p99-ms", str(BUDGET_MS), "--quiet-wait", str(args.quiet_wait), "--retry-noisy",
             "0" if args.quick else "1", "--pause", "1", "--connect-concurrency", str(args.load_connect)]
    return await generator.run(["--fixture", str(path), "--pid", pids, *(flags if paced else []), *extra],
                               modules=args.modules, label=label, **options)


# -- reading loadgen's reports -------------------------------------------------------------


def step_row(r: Report, app_names: tuple[str, ...] = ("app",)) -> dict[str, Any]:
    lat, split, gen = r.get("latency_ms") or {}, r.get("cpu_split") or {}, r.get("generator") or {}
    return {
        "rate_hz": r.get("rate_hz_per_driver"), "parcels": r.get("parcels"), "target_rate": r.get("target_send_rate"),
        "achieved_rate": r.get("achieved_send_rate"), "delivered_per_s": r.get("delivered_per_s"),
        "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"), "max_ms": lat.get("max"),
        "echo_p99_ms": (r.get("driver_echo_latency_ms") or {}).get("p99"),
        "lost": r.get("lost"), "loss_ratio": r.get("loss_ratio"), "errors": r.get("errors_received"),
        "error_samples": r.get("error_samples"), "closed_by_server": r.get("unexpected_closes"),
        "app_cpu": round(sum(split.get(n) or 0 for n in app_names), 3) if split else None,
        "db_cpu": split.get("db"), "redis_cpu": split.get("redis"),
        "server_cpu": (r.get("server") or {}).get("cpu_util"),
        "generator_cpu": gen.get("cpu_util"), "generator_saturated": gen.get("saturated"),
        "foreign_cores": (r.get("machine") or {}).get("foreign_cores"), "noisy": r.get("noisy"),
        "attempts": (r.get("attempt") or 0) + 1, "pass": bool(r.get("pass")),
        **({f"{n}_cpu": split.get(n) for n in app_names} if len(app_names) > 1 else {}),
    }


def last_row(reports: list[Report]) -> dict[str, Any] | None:
    steps = latest_steps(reports)
    return step_row(steps[-1]) if steps else None


def print_steps(rows: list[dict[str, Any]]) -> None:
    print("   | updates/s (target → sent) | p50 | p99 | max | lost | app CPU | DB CPU | generator CPU | other load "
          "| pass |")
    print("   |---|---|---|---|---|---|---|---|---|---|")
    for s in rows:
        lost = f"{s['lost']:,} ({s['loss_ratio']:.1%})" if s.get("lost") else "0"
        print(f"   | {s['target_rate']:,.0f} → {s['achieved_rate']:,.0f} | {fmt_ms(s['p50_ms'])} | "
              f"{fmt_ms(s['p99_ms'])} | {fmt_ms(s['max_ms'])} | {lost} | {s['app_cpu']} | {s['db_cpu']} | "
              f"{s['generator_cpu']}{' (saturated)' if s['generator_saturated'] else ''} | {s['foreign_cores']} | "
              f"{'yes' if s['pass'] else 'no'}{' (noisy)' if s['noisy'] else ''} |")
        if s.get("errors"):
            print(f"     {s['errors']} error messages, e.g. {s['error_samples']}")
        if s.get("closed_by_server"):
            print(f"     {s['closed_by_server']} sockets closed by the server")


def fmt_ms(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f} ms" if x >= 100 else f"{x:.1f} ms"


def best_passing(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max((s for s in rows if s["pass"]), key=lambda s: s["target_rate"], default=None)


def sustained(rows: list[dict[str, Any]]) -> float | None:
    """The last step before the first failing one (the issue's definition)."""
    ok = None
    for s in sorted(rows, key=lambda s: s["target_rate"]):
        if not s["pass"]:
            break
        ok = s["target_rate"]
    return ok


# -- the cases -----------------------------------------------------------------------------


async def null_ceiling(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The generator against a server that does nothing: 1,000 parcels × 3 sockets at 4 and 8 (and 10) Hz."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        "node", str(generator.NULL_SERVER), str(port), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "BENCH_NODE_MODULES": str(args.modules), "MAX_S": "300"})
    try:
        assert process.stdout is not None
        print(f"   {(await process.stdout.readline()).decode().strip()}")
        path = scratch / "null-fixture.json"
        path.write_text(json.dumps({"ws_url": f"ws://127.0.0.1:{port}/", "parcels": [
            {"parcel_id": i + 1, "driver_token": f"d{i}", "viewer_tokens": [f"a{i}", f"b{i}"]} for i in range(1000)]}))
        with CpuSampler({"null": process.pid}) as sampler:
            # A failing step is rerun (up to twice) when other processes were busy: this is the instrument's check.
            reports = await load(args, path, "null", str(process.pid), "--rates", "4,8" if args.quick else "4,8,10",
                                 "--duration", str(args.duration), "--drain", "3", "--retry-noisy", "2",
                                 "--connect-concurrency", "100", sampler=sampler, subscribe_report=False)
    finally:
        process.terminate()
        await process.wait()
    rows = [step_row(r, ("null",)) for r in latest_steps(reports)]
    print_steps(rows)
    reached = (best_passing(rows) or {"target_rate": 0})["target_rate"]
    print(f"   the generator's ceiling: {reached:,.0f} updates/s passing (p99 < {BUDGET_MS} ms, none lost) "
          f"against a server that does nothing; {'≥' if reached >= 2 * TARGET_RATE else 'BELOW'} twice the "
          f"target ({2 * TARGET_RATE:,})")
    return {"steps": rows, "ceiling": reached, "twice_target": reached >= 2 * TARGET_RATE}


async def never_reads(port: int, parcel_id: int, token: str) -> asyncio.StreamWriter:
    """A subscriber that completes its handshake and then reads nothing, ever."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws/tracking/?parcel_id={parcel_id}&token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.pause_reading()
    return writer


async def handshakes(args: argparse.Namespace, app: App, path: Path) -> dict[str, Any]:
    """loadgen counts a socket open at the WebSocket upgrade; this server authenticates after it,
    so the rate is the preload's: sockets that received `subscribed`, from the first socket's
    start to the last one's `subscribed` (refusals, 1013 for a database too slow, are listed)."""
    runs = []
    for i in range(1 if args.quick else 3):
        await app.wait_idle()
        reports = await load(args, path, "handshakes", app.pids, "--parcels", "334", "--rate", "0", "--hold", "1",
                             "--connect-concurrency", "100", paced=False, echo=False)
        c, s = find(reports, "connect")[0], find(reports, "subscribe")[0]
        runs.append({"target": c["conns_target"], "upgraded": c["conns_opened"],
                     "upgrades_per_s": c["handshakes_per_s"], "subscribed": s["subscribed"],
                     "per_s": s["subscribed_per_s"] or 0, "refusals": s["refusals"],
                     "seconds": s["seconds_to_last_subscribed"], "to_subscribed_ms": s["to_subscribed_ms"]})
        refused = f", REFUSED {s['refusals']}" if s["refused"] or s["closed_before_first_message"] else ""
        print(f"   run {i + 1}: {s['subscribed']:,}/{c['conns_target']:,} subscribed in "
              f"{s['seconds_to_last_subscribed']} s = {s['subscribed_per_s']:,}/s (upgrades alone "
              f"{c['handshakes_per_s']:,.0f}/s); one socket to `subscribed` p50 {s['to_subscribed_ms']['p50']} ms, "
              f"p99 {s['to_subscribed_ms']['p99']} ms{refused}")
    rates = sorted(r["per_s"] for r in runs)
    return {"runs": runs, "median_per_s": rates[len(rates) // 2], "best_per_s": rates[-1],
            "all_subscribed": all(r["subscribed"] == r["target"] for r in runs)}


class Board:
    """A dispatcher's board on /ws/dispatch/ (docs/protocol.md, "The dispatcher's board"): the
    `board` snapshot first, then each `location_update`'s arrival and the server's `timestamp`
    (when it accepted the fix; one clock, so the latency includes the conflation's wait)."""

    def __init__(self, url: str) -> None:
        self.url, self.updates, self.others = url, [], Counter()
        self.closed: str | None = None
        self.closing = False

    async def connect(self, wait: float = 30) -> None:
        started = time.monotonic()
        self.ws = await websocket_connect(self.url, max_message_size=64 * 1024 * 1024, connect_timeout=wait)
        first = json.loads(await asyncio.wait_for(self.ws.read_message(), wait) or "{}")
        if first.get("type") != "board":
            raise ValueError(f"first message was {first.get('type')!r} ({self.ws.close_code} {self.ws.close_reason})")
        self.snapshot_parcels, self.snapshot_ms = len(first.get("parcels") or []), (time.monotonic() - started) * 1000
        self.task = asyncio.ensure_future(self.read())

    async def read(self) -> None:
        while (raw := await self.ws.read_message()) is not None:
            arrived, message = time.time(), json.loads(raw)
            if message.get("type") == "location_update":
                self.updates.append((message["parcel_id"], arrived, parse_iso(message["timestamp"]).timestamp()))
            else:
                self.others[message.get("type")] += 1
        self.closed = None if self.closing else f"{self.ws.close_code} {self.ws.close_reason}"

    async def close(self) -> dict[str, Any]:
        self.closing = True
        self.ws.close()
        await asyncio.wait([self.task], timeout=5)
        return {"snapshot_parcels": self.snapshot_parcels, "snapshot_ms": round(self.snapshot_ms, 1),
                "other_messages": dict(self.others), "closed_by_server": self.closed}

    def summary(self, window: tuple[float, float]) -> dict[str, Any]:
        """Latency and the one-a-second rule over the updates that arrived in `window` (time.time()).
        Arrival carries the delivery's jitter, so the rule is judged by the count: over T seconds a
        parcel may get at most T + 1 updates (gaps under 0.95 s are listed)."""
        rows = [u for u in self.updates if window[0] <= u[1] <= window[1]]
        latencies = sorted((arrival - stamp) * 1000 for _, arrival, stamp in rows)
        by_parcel: dict[int, list[float]] = {}
        for parcel_id, arrival, _ in rows:
            by_parcel.setdefault(parcel_id, []).append(arrival)
        gaps = [b - a for times in by_parcel.values() for a, b in zip(times, times[1:], strict=False)]
        seconds, most = window[1] - window[0], max((len(t) for t in by_parcel.values()), default=0)
        pct = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None  # noqa: E731
        return {
            "window_s": round(seconds, 1), "updates": len(rows), "parcels_updated": len(by_parcel),
            "updates_per_s": round(len(rows) / seconds, 1) if seconds > 0 else None,
            "per_parcel_per_s": round(len(rows) / seconds / len(by_parcel), 3) if by_parcel and seconds > 0 else None,
            "most_for_one_parcel": most, "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1)},
            "min_gap_s": round(min(gaps), 3) if gaps else None, "gaps_under_1s": sum(g < 0.95 for g in gaps),
            "at_most_one_per_second": most <= seconds + 1,
        }


async def board_case(args: argparse.Namespace, app: App, path: Path, sampler: CpuSampler,
                     token: str) -> dict[str, Any]:
    """One board while 1,000 parcels send at 1 Hz (its latency, the drivers' fan-out beside it),
    then while 200 send at 4 Hz: a conflating board gets about one update per parcel per second."""
    board = Board(f"ws://127.0.0.1:{app.server.port}/ws/dispatch/?token={token}")
    try:
        await board.connect()
    except (HTTPClientError, OSError, TimeoutError, ValueError) as e:  # a 404: no board on this server
        print(f"   SKIPPED: the board could not connect ({e!r})")
        return {"skipped": repr(e)}
    print(f"   board: snapshot of {board.snapshot_parcels:,} parcels in {board.snapshot_ms:.0f} ms")
    out: dict[str, Any] = {}
    try:
        for name, parcels, rate, seconds in (("1hz", 1000, 1, 8 if args.quick else 12),
                                             ("4hz", 200, 4, 5 if args.quick else 6)):
            await app.wait_idle(extra=1)
            print(f"   {parcels:,} parcels at {rate} Hz for {seconds} s:")
            reports = await load(args, path, f"board-{name}", app.pids, "--parcels", str(parcels), "--rate", str(rate),
                                 "--duration", str(seconds), sampler=sampler)
            await asyncio.sleep(1.5)  # the last second's conflated updates
            if not (run := latest_steps(reports)):
                continue
            # From the first send until a second after the last one (its conflated update may wait that long).
            started = float(run[-1]["arrived_unix"]) - float(run[-1]["wall_s"])
            row, summary = step_row(run[-1]), board.summary((started, started + seconds + 1.0))
            out[name] = {"drivers": row, "board": summary}
            lat = summary["latency_ms"]
            print(f"   drivers' fan-out: p50 {fmt_ms(row['p50_ms'])}, p99 {fmt_ms(row['p99_ms'])}, lost {row['lost']}")
            print(f"   board: {summary['updates']:,} updates ({summary['updates_per_s']}/s, "
                  f"{summary['per_parcel_per_s']} per parcel per second) for {summary['parcels_updated']:,} parcels; "
                  f"from the server's timestamp p50 {fmt_ms(lat['p50'])} p99 {fmt_ms(lat['p99'])} max "
                  f"{fmt_ms(lat['max'])} (the conflation's wait included)")
            print(f"   at most one update per parcel per second: "
                  f"{'yes' if summary['at_most_one_per_second'] else 'NO'} (at most {summary['most_for_one_parcel']} "
                  f"for one parcel in {summary['window_s']} s; arrival gaps: smallest {summary['min_gap_s']} s, "
                  f"{summary['gaps_under_1s']} under 0.95 s)")
    finally:
        out["state"] = await board.close()
    if board.closed:
        print(f"   the server closed the board: {board.closed}")
    return out


async def ten_thousand(args: argparse.Namespace, app: App, path: Path, sampler: CpuSampler,
                       parcels: int) -> dict[str, Any]:
    before, after, hold = {"app": rss_kib(app.pid), "db": rss_kib(app.db_pid)}, {}, 5 if args.quick else 10

    def on_line(line: str) -> None:
        # Each process's RSS once every socket is open (loadgen then holds them `hold` seconds before sending).
        if not after and "] holding " in line:
            after.update(app=rss_kib(app.pid), db=rss_kib(app.db_pid))

    reports = await load(args, path, "10k", app.pids, "--parcels", str(parcels), "--hold", str(hold), "--rate", "1",
                         "--duration", str(args.duration if args.quick else 10), sampler=sampler, on_line=on_line)
    c, h, row = find(reports, "connect")[0], (find(reports, "hold") or [{}])[0], last_row(reports)
    opened, per_socket = c["conns_opened"], c["server"]["rss_kb_per_conn"]
    split = {k: round((after[k] - before[k]) / opened, 1) for k in before} if after and opened else None
    print(f"   {opened:,}/{c['conns_target']:,} sockets open in {c['connect_s']:.1f} s "
          f"({c['handshakes_per_s']:,.0f}/s){', failures ' + str(c['connect_failures']) if c['conns_failed'] else ''}")
    print(f"   memory: app + database {c['server']['rss_mb_before']} → {c['server']['rss_mb_connected']} MiB = "
          f"{per_socket} KiB a socket" + (f" (app {split['app']} KiB, database {split['db']} KiB)" if split else ""))
    print(f"   after {hold} s held: {h.get('conns_still_open')} still open, {h.get('unexpected_closes')} closed by "
          f"the server")
    if row:
        print(f"   at 1 update/s per driver ({row['target_rate']:,.0f}/s): p50 {fmt_ms(row['p50_ms'])} p99 "
              f"{fmt_ms(row['p99_ms'])} max {fmt_ms(row['max_ms'])}, lost {row['lost']}, app CPU {row['app_cpu']}, "
              f"DB CPU {row['db_cpu']}, pass {row['pass']}")
    held = opened == c["conns_target"] == h.get("conns_still_open") and not (row and row["closed_by_server"])
    return {"sockets": c["conns_target"], "opened": opened, "connect_s": c["connect_s"],
            "handshakes_per_s": c["handshakes_per_s"], "kib_per_socket": per_socket, "kib_per_socket_split": split,
            "rss_mib_before": c["server"]["rss_mb_before"], "rss_mib_connected": c["server"]["rss_mb_connected"],
            "held": held, "still_open_after_hold": h.get("conns_still_open"), "run": row}


async def storm(args: argparse.Namespace, app: App, path: Path, sockets: int) -> dict[str, Any]:
    """Every socket opened at once (`--connect-concurrency` = all of them, counted at the upgrade),
    as pages reconnecting after a restart do; the preload counts `subscribed` and refusals."""
    reports = await load(args, path, "storm", app.pids, "--rate", "0", "--hold", "1", "--connect-concurrency",
                         str(sockets), paced=False, echo=False)
    c, s = find(reports, "connect")[0], find(reports, "subscribe")[0]
    refused = s["refused"] + s["closed_before_first_message"]
    print(f"   {s['subscribed']:,}/{c['conns_target']:,} subscribed, {refused:,} refused or closed "
          f"({s['refusals'] or 'none'}); the last `subscribed` {s['seconds_to_last_subscribed']} s after the first "
          f"upgrade began; one socket to `subscribed` p50 {s['to_subscribed_ms']['p50']} ms, "
          f"p99 {s['to_subscribed_ms']['p99']} ms")
    return {"target": c["conns_target"], "upgraded": c["conns_opened"], "subscribed": s["subscribed"],
            "refused": refused, "refusals": s["refusals"], "seconds": s["seconds_to_last_subscribed"],
            "to_subscribed_ms": s["to_subscribed_ms"]}


async def redis_pair(args: argparse.Namespace, env: dict[str, str], data: Path, fx: Fixture,
                     scratch: Path) -> dict[str, Any]:
    redis, apps = RedisServer().start(), []
    try:
        print(f"   redis-server pid {redis.process.pid} on port {redis.port}")
        for n in (1, 2):
            apps.append(App({**env, "BROKER_URL": redis.url}, data, f"process {n}").start())
        print(f"   process 1 (drivers) pid {apps[0].pid}, process 2 (viewers) pid {apps[1].pid}, database pid "
              f"{apps[0].db_pid}")
        pids = {"app1": apps[0].pid, "app2": apps[1].pid, "db": apps[0].db_pid, "redis": redis.process.pid}
        with CpuSampler(pids) as sampler:
            reports = await load(args, fx.write(scratch / "fixture-redis.json", apps[1].ws_url, 1000), "redis",
                                 ",".join(map(str, pids.values())), "--parcels", "1000", "--rates",
                                 "1,4" if args.quick else "1,2,3,4", "--duration", str(args.duration),
                                 "--stop-after-fail", "1", sampler=sampler, split_driver_url=apps[0].ws_url)
        rows = [step_row(r, ("app1", "app2")) for r in latest_steps(reports)]
        print_steps(rows)
        for r in rows:
            print(f"     {r['target_rate']:,.0f}/s: process 1 (drivers) {r['app1_cpu']} core, process 2 (viewers) "
                  f"{r['app2_cpu']}, Redis {r['redis_cpu']}")
        print(f"   6b. a quiet process (process 2) while the other carries {BUSY_PARCELS * BUSY_HZ:,} updates/s for "
              f"other parcels")
        idle = await idle_process(args, apps[1], apps[0], redis.url, redis.process.pid, fx, scratch,
                                  12 if args.quick else 20)
        return {"steps": rows, "sustained": sustained(rows), "idle": idle}
    finally:
        for app in reversed(apps):
            app.stop()
        redis.kill()


async def profile(args: argparse.Namespace, app: App, path: Path, sampler: CpuSampler,
                  scratch: Path) -> dict[str, Any]:
    """py-spy on the app (its busy threads) and on the database (the thread holding the GIL: its
    idle connection threads wait in recv) for 20 s once the sockets are connected and sending."""
    seconds, sending = 20, asyncio.Event()
    outputs = {name: scratch / f"profile-{name}.txt" for name in ("app", "db")}

    async def spy(name: str, pid: int, *extra: str) -> None:
        await sending.wait()
        await asyncio.sleep(1)
        process = await asyncio.create_subprocess_exec(
            args.profile, "record", "-p", str(pid), "-d", str(seconds), "-r", "100", "--format", "raw",
            "-o", str(outputs[name]), "--nonblocking", *extra, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
        if process.returncode:
            print(f"   py-spy ({name}): {err.decode().strip()[-300:]}")

    spies = asyncio.gather(spy("app", app.pid), spy("db", app.db_pid, "--gil"))
    reports = await load(args, path, "profile", app.pids, "--parcels", "1000", "--rate", str(args.profile_rate),
                         "--duration", str(seconds + 4), sampler=sampler,
                         on_line=lambda line: "] step 0:" in line and "msg/s for" in line and sending.set())
    sending.set()
    await spies
    row = last_row(reports) or {}
    print(f"   under the profile: p50 {fmt_ms(row.get('p50_ms'))} p99 {fmt_ms(row.get('p99_ms'))}, "
          f"app CPU {row.get('app_cpu')}, DB CPU {row.get('db_cpu')}")
    out: dict[str, Any] = {"run": row or None}
    for name, file in outputs.items():
        if file.exists():
            p = out[name] = summarise_profile(file, seconds)
            print(f"   {name}: {p['samples']:,} samples (~{p['busy_share']:.0%} of one core's wall time busy), raw "
                  f"stacks in {file}")
            for key, title in (("self", "by itself"), ("self_by_file", "by itself, by file"),
                               ("inclusive", "with what it calls")):
                print(f"     {title}:\n" + "\n".join(f"       {share:6.1%}  {f}" for f, share in p[key]))
    return out


def summarise_profile(file: Path, seconds: float, top: int = 15) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks → each function's share of samples, by itself and with what it calls."""
    own, files, inclusive, total = Counter(), Counter(), Counter(), 0
    for line in file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if frames:
            n = int(count)
            total += n
            own[frames[-1]] += n
            files[frames[-1].rpartition(" (")[2].rstrip(")")] += n
            inclusive.update(dict.fromkeys(set(frames), n))
    shares = lambda pairs: [(f, round(n / total, 3)) for f, n in pairs] if total else []  # noqa: E731
    return {"samples": total, "seconds": seconds, "busy_share": round(total / (seconds * 100), 3),
            "self": shares(own.most_common(top)), "self_by_file": shares(files.most_common(top)),
            # without the frames every stack passes through (the event loop, main)
            "inclusive": shares([(f, n) for f, n in inclusive.most_common() if n < 0.9 * total][:top])}


# -- the summary -----------------------------------------------------------------------------


def summary_table(res: dict[str, Any]) -> str:
    rows = ["| figure | the seed's Channels + daphne | this run | target |", "|---|---|---|---|"]
    if sw := res.get("sweep") or []:
        best, hold = best_passing(sw), sustained(sw)
        first_fail = next((s for s in sorted(sw, key=lambda s: s["target_rate"]) if not s["pass"]), None)
        at_target = next((s for s in sw if s["target_rate"] == TARGET_RATE), None)
        text = f"{hold:,.0f}" if hold else "none"
        if first_fail:
            text += (f" ({first_fail['target_rate']:,.0f} fails: p99 {fmt_ms(first_fail['p99_ms'])}"
                     f"{', ' + format(first_fail['loss_ratio'], '.0%') + ' lost' if first_fail['lost'] else ''})")
        if best and best["target_rate"] != hold:
            text += f"; best passing step {best['target_rate']:,.0f}"
        if at_target:
            text += f"; at {TARGET_RATE:,}/s p99 {fmt_ms(at_target['p99_ms'])}"
        rows.append(f"| sustained updates/s, 1,000 parcels × 3 sockets (p99 < {BUDGET_MS} ms, none lost) | "
                    f"{SEED['sustained']} (200 parcels, p99 < 100 ms) | {text} | ≥ 4,000 |")
    if r := res.get("rate200"):
        rows.append(f"| 200 parcels × 8 Hz = 1,600/s: p50 / p99, lost | – | {fmt_ms(r['p50_ms'])} / "
                    f"{fmt_ms(r['p99_ms'])}, {r['lost']} lost | p99 < 50 ms |")
    if s := res.get("slow"):
        rows.append(f"| … with 20 subscribers that never read: p99 | – | {fmt_ms(s['p99_ms'])} | no change |")
    if h := res.get("handshakes"):
        upgrades = sorted(r["upgrades_per_s"] for r in h["runs"])[len(h["runs"]) // 2]
        refused = "" if h["all_subscribed"] else "; some refused, see the JSON"
        rows.append(f"| authenticated handshakes/s (1,002 sockets, 100 in flight, until `subscribed`), median of "
                    f"{len(h['runs'])} | {SEED['handshakes']} | {h['median_per_s']:,.0f} (the upgrade alone: "
                    f"{upgrades:,.0f}/s{refused}) | ≥ 2,000 |")
    if t := res.get("ten_thousand"):
        split, run = t.get("kib_per_socket_split"), t.get("run") or {}
        rows.append(f"| memory per open socket, app + database ({t['sockets']:,} sockets) | {SEED['memory']} | "
                    f"{t['kib_per_socket']} KiB" + (f" (app {split['app']}, DB {split['db']})" if split else "")
                    + " | ≤ 14 KiB |")
        held_text = "all held" if t["held"] else f"{t['still_open_after_hold'] or 0:,} held"
        rows.append(f"| {t['sockets']:,} sockets, 1 update/s per driver | {SEED['ten_thousand']} | {held_text}, p99 "
                    f"{fmt_ms(run.get('p99_ms'))}, {run.get('lost')} lost | all held, p99 < 50 ms |")
    if st := res.get("storm"):
        rows.append(f"| a reconnect storm: {st['target']:,} sockets at once on a fresh process (no pacing, counted at "
                    f"the upgrade): subscribed / refused / until the last `subscribed` | – | {st['subscribed']:,} / "
                    f"{st['refused']:,} / {st['seconds']} s | all, 0 refused |")
    if b := res.get("board"):
        one, four = b.get("1hz") or {}, b.get("4hz") or {}
        if "skipped" in b:
            rows.append(f"| dispatcher's board, 1,000 parcels at 1 Hz | – | not measured ({b['skipped']}) | – |")
        if one:
            rows.append(f"| dispatcher's board beside 1,000 parcels at 1 Hz: the board's p99 (from the server's "
                        f"timestamp, conflation's wait included) / the drivers' fan-out p99 | – | "
                        f"{fmt_ms(one['board']['latency_ms']['p99'])} / {fmt_ms(one['drivers'].get('p99_ms'))} | – |")
        if four:
            fb = four["board"]
            rows.append(f"| … 200 parcels at 4 Hz: updates per parcel per second on the board | – | "
                        f"{fb['per_parcel_per_s']} (at most {fb['most_for_one_parcel']} in {fb['window_s']} s) | ≤ 1 |")
    if rd := res.get("redis"):
        one = {s["target_rate"]: s for s in sw}
        parts = [f"{s['target_rate']:,.0f}/s p99 {fmt_ms(s['p99_ms'])}"
                 + (f" (one process {fmt_ms(one[s['target_rate']]['p99_ms'])})" if s["target_rate"] in one else "")
                 + ("" if s["pass"] else " fails") for s in rd.get("steps") or []]
        rows.append(f"| two processes + Redis, drivers on one, viewers on the other | – | "
                    f"{'; '.join(parts) or '–'} | – |")
        if cpu := (idle := rd.get("idle") or {}).get("cpu"):
            rows.append(f"| idle process CPU while the other carries {idle['busy_sent_per_s'] or 0:,.0f} updates/s: "
                        f"a process whose {idle['quiet_sockets']} sockets watch {idle['quiet_parcels']} other parcels "
                        f"(the busy one, Redis: commands/s) | – | {cpu['quiet']:.1%} of a core ({BEFORE_SHARDED}); "
                        f"the busy one {cpu['busy']:.0%}, Redis {cpu['redis']:.1%}: "
                        f"{idle['redis_commands_per_s']:,}/s{' (noisy)' if idle['noisy'] else ''} | < ~5 % |")
    if n := res.get("null"):
        rows.append(f"| the generator's own ceiling (null server, same sockets) | – | {n['ceiling']:,.0f}/s passing | "
                    f"≥ {2 * TARGET_RATE:,} |")
    return "\n".join(rows)


def verdict(res: dict[str, Any]) -> list[str]:
    out, holds = [], lambda ok: "HOLDS" if ok else "NOT MET"  # noqa: E731
    if sw := res.get("sweep"):
        ok = any(s["target_rate"] >= TARGET_RATE and s["pass"] for s in sw)
        out.append(f"≥ {TARGET_RATE:,} updates/s at p99 < {BUDGET_MS} ms, none lost: {holds(ok)}")
    if r := res.get("rate200"):
        out.append(f"1,600/s (200 × 8 Hz) at p99 < {BUDGET_MS} ms: {holds(r['pass'])}")
    if h := res.get("handshakes"):
        out.append(f"≥ 2,000 handshakes/s: {holds(h['median_per_s'] >= 2000 and h['all_subscribed'])}")
    if st := res.get("storm"):
        out.append(f"a storm of {st['target']:,} sockets: every one subscribed, none refused: "
                   f"{holds(st['subscribed'] == st['target'] and not st['refused'])}")
    if cpu := ((res.get("redis") or {}).get("idle") or {}).get("cpu"):
        out.append(f"a process watching 10 parcels under ~5 % of a core while another carries 2,000 updates/s: "
                   f"{holds(cpu['quiet'] is not None and cpu['quiet'] < 0.05)}")
    if t := res.get("ten_thousand"):
        out.append(f"≤ 14 KiB per socket at {t['sockets']:,}: {holds((t['kib_per_socket'] or 99) <= 14)}")
        out.append(f"{t['sockets']:,} held at 1 Hz, p99 < {BUDGET_MS} ms: "
                   f"{holds(t['held'] and (t.get('run') or {}).get('pass'))}")
    return out


# -- main ------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, res: dict[str, Any]) -> None:
    cases, scratch = args.cases, Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    data, started = scratch / "data", time.monotonic()

    def header(text: str) -> None:
        print(f"\n## {text}  [{time.monotonic() - started:.0f} s]", flush=True)

    if "null" in cases:
        header("0. the generator's ceiling: null_server.js (no auth, no database), 1,000 parcels × 3 sockets")
        res["null"] = await null_ceiling(args, scratch)
    if not set(cases) - {"null"} and not args.profile:
        return
    big = 3334 if {"10k", "storm"} & set(cases) and not args.quick else 1000  # quick: 3,000 sockets
    env = app_env(ACCESS_TOKEN_TTL="7200", BCRYPT_ROUNDS="4")  # tokens must outlive the run
    header(f"setup: {big:,} parcels in the database with the product's models, then app.py serve --no-demo "
           f"--data-dir {data}")
    fx = await seed(Settings.from_env(env, data_dir=data).with_secret(), big)
    res["fixture"] = {"parcels": len(fx.parcels), "users": fx.users, "seconds": round(fx.seconds, 1)}
    print(f"   {len(fx.parcels):,} parcels, {fx.users:,} users in {fx.seconds:.0f} s")
    app = App(env, data).start()
    try:
        print(f"   app pid {app.pid}, database pid {app.db_pid}, port {app.server.port}")
        fx1000 = fx.write(scratch / "fixture-1000.json", app.ws_url, 1000)
        with CpuSampler({"app": app.pid, "db": app.db_pid}) as sampler:
            if "sweep" in cases:
                header(f"1. sweep: 1,000 parcels × (driver + 2 viewers) = 3,000 sockets, {args.rates} Hz per driver")
                await app.wait_idle()
                reports = await load(args, fx1000, "sweep", app.pids, "--parcels", "1000", "--rates", args.rates,
                                     "--duration", str(args.duration), sampler=sampler)
                res["sweep"] = sw = [step_row(r) for r in latest_steps(reports)]
                print_steps(sw)
                best = best_passing(sw)
                print(f"   sustained: {sustained(sw) or 0:,.0f} updates/s; best passing step "
                      f"{best['target_rate'] if best else 0:,.0f}; target ≥ {TARGET_RATE:,} at p99 < {BUDGET_MS} ms "
                      f"with nothing lost: {'HOLDS' if best and best['target_rate'] >= TARGET_RATE else 'NOT MET'}")
            for case, title, stalled in (("rate200", "2. 200 parcels × 8 Hz = 1,600 updates/s", 0),
                                         ("slow", "2b. the same with 20 subscribers that never read (one each on "
                                          "the first 20 parcels)", 20)):
                if case not in cases:
                    continue
                header(title)
                await app.wait_idle()
                quiet = [await never_reads(app.server.port, p["parcel_id"], fx.dispatcher_token)
                         for p in fx.parcels[:stalled]]
                try:
                    row = res[case] = last_row(await load(args, fx1000, "200x8" + "+stalled" * bool(stalled), app.pids,
                                                          "--parcels", "200", "--rate", "8", "--duration",
                                                          str(args.duration), sampler=sampler))
                finally:
                    for w in quiet:
                        w.close()
                    await asyncio.gather(*(w.wait_closed() for w in quiet), return_exceptions=True)
                if row:
                    print_steps([row])
                    if stalled and (base := res.get("rate200")) and base["p99_ms"]:
                        print(f"   p99 with them / without: {row['p99_ms'] / base['p99_ms']:.2f}x")
            if "handshakes" in cases:
                header("3. handshakes: 1,002 authenticated sockets, 100 in flight")
                res["handshakes"] = await handshakes(args, app, fx1000)
                print(f"   median {res['handshakes']['median_per_s']:,.0f}/s (target ≥ 2,000)")
            if "board" in cases:
                header("4. the dispatcher's board: 1,000 parcels at 1 Hz, one board on /ws/dispatch/")
                await app.wait_idle()
                res["board"] = await board_case(args, app, fx1000, sampler, fx.dispatcher_token)
        for case, title in (("10k", f"5. {3 * big:,} sockets ({big:,} parcels × 3)"),
                            ("storm", f"5b. a reconnect storm: {3 * big:,} sockets at once")):
            if case not in cases:
                continue
            header(f"{title} on a freshly started process")
            app.stop()
            app = App(env, data).start()
            print(f"   app pid {app.pid}, database pid {app.db_pid}")
            every = fx.write(scratch / "fixture-all.json", app.ws_url)
            if case == "storm":
                res["storm"] = await storm(args, app, every, 3 * big)
                continue
            with CpuSampler({"app": app.pid, "db": app.db_pid}) as sampler:
                res["ten_thousand"] = await ten_thousand(args, app, every, sampler, big)
        if "redis" in cases:
            header("6. two processes behind one Redis: drivers on process 1, viewers on process 2")
            app.stop()
            res["redis"] = await redis_pair(args, env, data, fx, scratch)
        if args.profile:
            header(f"7. profile: py-spy on the app and the database, 1,000 parcels × {args.profile_rate:g} Hz")
            if app.server.process is None or app.server.process.poll() is not None:
                app = App(env, data).start()
                fx1000 = fx.write(scratch / "fixture-1000.json", app.ws_url, 1000)
            await app.wait_idle()
            with CpuSampler({"app": app.pid, "db": app.db_pid}) as sampler:
                res["profile"] = await profile(args, app, fx1000, sampler, scratch)
    finally:
        app.stop()
        res["seconds"] = round(time.monotonic() - started)
        print(f"\n(scratch files in {scratch})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fds = generator.raise_file_limit()
    args.modules = generator.node_modules()
    res: dict[str, Any] = {"meta": {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "commit": generator.git_commit(),
        "cores": os.cpu_count(), "python": platform.python_version(),
        "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
        "quick": args.quick, "rates": args.rates, "duration_s": args.duration, "budget_ms": BUDGET_MS,
        "file_limit": fds, "cases": args.cases}}
    print(f"# make bench{' --quick' if args.quick else ''}: {os.cpu_count()} cores, commit {res['meta']['commit']}, "
          f"file limit {fds}, generator {generator.LOADGEN}")
    if fds < 10100 and "10k" in args.cases:
        print(f"   (a file limit of {fds} is too low for 10,002 sockets a side: ulimit -n 20000 first)")
    try:
        asyncio.run(bench(args, res))
    except KeyboardInterrupt:
        print("interrupted")
    res["loadgen_reports"] = generator.RAW
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # a partial run does not overwrite the whole run's results
    name = ("fanout-quick" if args.quick else "fanout") + ("-" + "-".join(args.cases) if args.cases != list(CASES)
                                                          else "")
    (args.out_dir / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
    png = plot(res, args.out_dir / f"{name}.png") if res.get("sweep") else None
    table = summary_table(res)
    (args.out_dir / f"{name}.md").write_text(f"<!-- make bench{' ARGS=--quick' if args.quick else ''}, "
                                             f"{res['meta']['when']}, commit {res['meta']['commit']} -->\n\n{table}\n")
    print(f"\n## Summary ({res.get('seconds', '?')} s)\n\n{table}\n")
    for line in verdict(res):
        print(f"- {line}")
    print(f"\nresults: {args.out_dir / (name + '.json')}" + (f", {png}" if png else "")
          + f", {args.out_dir / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
