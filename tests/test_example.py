"""Issue 2's "done when": a script with only HTTP and WebSocket clients drives the demo end to end."""

from __future__ import annotations

import subprocess
import sys

from devtools.process import ROOT, Server, app_env


def test_demo_driver_location_reaches_demo_client(tmp_path):
    server = Server(app_env(DATA_DIR=str(tmp_path))).start()  # a first start: the demo data is created
    try:
        run = subprocess.run([sys.executable, "examples/drive_and_watch.py", server.url], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    finally:
        output = server.stop()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "client: subscribed" in lines and "driver: subscribed" in lines
    seen = [line for line in lines if line.startswith("client sees the truck at")]
    assert [line.split(" (")[0] for line in seen] == [
        "client sees the truck at 28.58, 77.21",
        "client sees the truck at 28.576, 77.208",
        "client sees the truck at 28.572, 77.206",
    ]
    assert "driver@demo.test" in output  # the logins are printed on start
