"""Running the reference load generator (`../shared/bench/loadgen.js`) and watching the
server's processes while it runs.

The generator is one Node process of its own; it prints one JSON line per phase
(`connect`, `hold`, `step`/`run`, `sweep_summary`) and its log on stderr. `run()` returns
those reports, each with the app's and the database's CPU over that phase's window
(the generator reports them summed; a `CpuSampler` thread reads /proc for each apart).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT.parent / "shared" / "bench"
LOADGEN = BENCH / "loadgen.js"
NULL_SERVER = BENCH / "null_server.js"
PRELOAD = Path(__file__).resolve().parent / "loadgen_preload.js"
SCRATCH = Path(__file__).resolve().parent / ".node"  # gitignored; `make bench` installs here
CLK_TCK = os.sysconf("SC_CLK_TCK")
RAW: dict[str, list[dict[str, Any]]] = {}  # every report of every run, by label, for the results file


def node_modules() -> Path:
    """`ws` for the generator: $BENCH_NODE_MODULES (what `make bench` sets), else an npm
    install into benchmarks/.node/ (outside any tracked path)."""
    given = os.environ.get("BENCH_NODE_MODULES")
    if given and (Path(given) / "ws").is_dir():
        return Path(given)
    target = SCRATCH / "node_modules"
    if (target / "ws").is_dir():
        return target
    if not shutil.which("npm") or not shutil.which("node"):
        raise RuntimeError("node and npm are needed for the load generator (apt-get install nodejs npm)")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    shutil.copy(BENCH / "package.json", SCRATCH / "package.json")
    print(f"npm install into {SCRATCH}", flush=True)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=SCRATCH, check=True)
    return target


def raise_file_limit() -> int:
    """About one descriptor per socket on each side (the server and the generator inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65535 if hard == resource.RLIM_INFINITY else min(65535, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process in seconds, from /proc/<pid>/stat (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class CpuSampler:
    """Every 0.2 s: each named process's CPU seconds, so any window's share can be read back."""

    def __init__(self, pids: dict[str, int], every: float = 0.2) -> None:
        self.pids = pids
        self.every = every
        self.samples: list[tuple[float, dict[str, float | None]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), {k: cpu_seconds(p) for k, p in self.pids.items()}))
            if self._stop.wait(self.every):
                self.samples.append((time.monotonic(), {k: cpu_seconds(p) for k, p in self.pids.items()}))
                return

    def share(self, start: float, end: float) -> dict[str, float | None]:
        """Cores each process used between two moments (nearest samples)."""
        if not self.samples or end <= start:
            return {}
        a = min(self.samples, key=lambda s: abs(s[0] - start))
        b = min(self.samples, key=lambda s: abs(s[0] - end))
        wall = b[0] - a[0]
        out: dict[str, float | None] = {}
        for name in self.pids:
            x, y = a[1].get(name), b[1].get(name)
            out[name] = None if x is None or y is None or wall <= 0 else round((y - x) / wall, 3)
        return out


async def run(args: list[str], *, modules: Path, sampler: CpuSampler | None = None, label: str = "",
              split_driver_url: str | None = None, echo: bool = True, max_seconds: float = 900,
              on_line: Callable[[str], None] | None = None, subscribe_report: bool = True) -> list[dict[str, Any]]:
    """Run loadgen.js with `args`; every JSON report it printed, in order, each with
    `cpu_split` (cores per watched process over the phase) when a sampler is given.

    Through `loadgen_preload.js`: `subscribe_report` makes loadgen count a socket open
    when it is subscribed, not at the upgrade (this server authenticates after it), and
    adds a `subscribe` report (refusals and their reasons); `split_driver_url` sends
    drivers' sockets there instead of the fixture's URL (two processes behind one broker)."""
    flag = "1" if subscribe_report else ""
    env = {**os.environ, "BENCH_NODE_MODULES": str(modules), "BENCH_SUBSCRIBE_REPORT": flag,
           "BENCH_OPEN_ON_SUBSCRIBED": flag}
    if split_driver_url:
        env["BENCH_SPLIT_DRIVER_URL"] = split_driver_url
    command = ["node", "--require", str(PRELOAD), str(LOADGEN), *args, "--max-total-s", str(int(max_seconds))]
    if label:
        command += ["--label", label]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE, env=env, limit=2 ** 24)
    assert process.stdout is not None and process.stderr is not None
    reports: list[dict[str, Any]] = []

    async def log() -> None:
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if on_line is not None:
                on_line(line)
            if echo:
                sys.stdout.write(f"      {line}\n")
                sys.stdout.flush()

    async def read() -> None:
        async for raw in process.stdout:
            try:
                report = json.loads(raw)
            except ValueError:
                continue
            arrived = time.monotonic()
            report["arrived_unix"] = time.time()
            if sampler is not None and report.get("wall_s"):
                report["cpu_split"] = sampler.share(arrived - float(report["wall_s"]), arrived)
            reports.append(report)

    await asyncio.gather(log(), read(), process.wait())
    for r in find(reports, "subscribe"):
        refused = f"; REFUSED {r['refused']:,}: {r['refusals']}" if r["refused"] else ""
        lost = r["closed_before_first_message"]
        print(f"      [preload] {r['subscribed']:,}/{r['started']:,} sockets subscribed in "
              f"{r['seconds_to_last_subscribed']} s ({r['subscribed_per_s']}/s; to `subscribed` p50 "
              f"{r['to_subscribed_ms']['p50']} ms, p99 {r['to_subscribed_ms']['p99']} ms){refused}"
              + (f"; {lost} closed before any message" if lost else ""), flush=True)
    RAW.setdefault(label or "loadgen", []).extend(reports)
    if process.returncode not in (0, None):
        print(f"      loadgen exited with {process.returncode}")
    return reports


def find(reports: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    return [r for r in reports if r.get("mode") == mode]


def latest_steps(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last attempt of each step (loadgen reruns a failing step when the machine was noisy)."""
    by_step: dict[int, dict[str, Any]] = {}
    for r in reports:
        if r.get("mode") in ("step", "run"):
            by_step[int(r.get("step", 0))] = r
    return [by_step[k] for k in sorted(by_step)]
