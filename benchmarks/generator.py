"""Running the reference load generator (`../shared/bench/loadgen.js`) and watching the
server's processes while it runs.

The generator is one Node process of its own; it prints one JSON line per phase
(`connect`, `hold`, `step`/`run`, `sweep_summary`) and its log on stderr. `run()` returns
those reports, each with the cores every watched process used over that phase
(`cpu_split`: the generator reports them summed; a `CpuSampler` thread reads /proc for each).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent.parent / "shared" / "bench"
LOADGEN = BENCH / "loadgen.js"
NULL_SERVER = BENCH / "null_server.js"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RAW: dict[str, list[dict[str, Any]]] = {}  # every report of every run, by label, for the results file
Report = dict[str, Any]


def node_modules() -> Path:
    """`ws` for the generator, where `make bench` installs it ($BENCH_NODE_MODULES, else benchmarks/.node/)."""
    path = Path(os.environ.get("BENCH_NODE_MODULES") or HERE / ".node" / "node_modules")
    if not (path / "ws").is_dir():
        raise RuntimeError(f"no `ws` in {path}: run it through make, which installs the generator's modules")
    return path


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
        return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


class CpuSampler:
    """Every 0.2 s: each named process's CPU seconds, so any window's share can be read back."""

    def __init__(self, pids: dict[str, int], every: float = 0.2) -> None:
        self.pids, self.every = pids, every
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
        used = {name: (a[1].get(name), b[1].get(name)) for name in self.pids}
        return {name: None if x is None or y is None or wall <= 0 else round((y - x) / wall, 3)
                for name, (x, y) in used.items()}


async def run(args: list[str], *, modules: Path, sampler: CpuSampler | None = None, label: str = "",
              split_driver_url: str | None = None, echo: bool = True, max_seconds: float = 900,
              on_line: Callable[[str], None] | None = None, on_report: Callable[[Report], None] | None = None,
              subscribe_report: bool = True) -> list[Report]:
    """Run loadgen.js with `args`; every JSON report it printed, in order.

    Through `loadgen_preload.js`: `subscribe_report` makes loadgen count a socket open
    when it is subscribed, not at the upgrade (this server authenticates after it), and
    adds a `subscribe` report (refusals and their reasons); `split_driver_url` sends
    drivers' sockets there instead of the fixture's URL (two processes behind one broker)."""
    flag = "1" if subscribe_report else ""
    env = {**os.environ, "BENCH_NODE_MODULES": str(modules), "BENCH_SUBSCRIBE_REPORT": flag,
           "BENCH_OPEN_ON_SUBSCRIBED": flag, "BENCH_SPLIT_DRIVER_URL": split_driver_url or ""}
    command = ["node", "--require", str(HERE / "loadgen_preload.js"), str(LOADGEN), *args,
               "--max-total-s", str(int(max_seconds)), *(["--label", label] if label else [])]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE, env=env, limit=2 ** 24)
    assert process.stdout is not None and process.stderr is not None
    reports: list[Report] = []

    async def log() -> None:
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if on_line is not None:
                on_line(line)
            if echo:
                print(f"      {line}", flush=True)

    async def read() -> None:
        async for raw in process.stdout:
            try:
                report = json.loads(raw)
            except ValueError:
                continue
            arrived, report["arrived_unix"] = time.monotonic(), time.time()
            if sampler is not None and report.get("wall_s"):
                report["cpu_split"] = sampler.share(arrived - float(report["wall_s"]), arrived)
            reports.append(report)
            if on_report is not None:
                on_report(report)

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


def find(reports: list[Report], mode: str) -> list[Report]:
    return [r for r in reports if r.get("mode") == mode]


def latest_steps(reports: list[Report]) -> list[Report]:
    """The last attempt of each step (loadgen reruns a failing step when the machine was noisy)."""
    by_step = {int(r.get("step", 0)): r for r in reports if r.get("mode") in ("step", "run")}
    return [by_step[k] for k in sorted(by_step)]


def git_commit(root: Path = HERE.parent) -> str:
    """The commit, `-dirty` with uncommitted changes to tracked files (read-only git)."""
    return subprocess.run(["git", "--no-optional-locks", "describe", "--always", "--dirty"], cwd=root,
                          capture_output=True, text=True).stdout.strip()
