"""The real servers as child processes, for the tests and the benchmarks alike: `app.py`'s
command line, `app.py serve` on a free port, and a redis-server of our own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(**values: str) -> dict[str, str]:
    """The environment for a child `app.py`: this one, minus app settings, plus `values`."""
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "SECRET_KEY", "APP_ENV", "DATA_DIR")}
    env.update({"BCRYPT_ROUNDS": "4", "PYTHONUNBUFFERED": "1", **values})
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


class Server:
    """`python app.py serve` on a free loopback port, stopped with SIGTERM like a service manager would."""

    def __init__(self, env: dict[str, str], *args: str, port: int | None = None) -> None:
        self.env = env
        self.args = args
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        # A file, not a pipe: nobody reads a pipe while the server runs, and a full
        # one would block the server on its next log line.
        self.log = tempfile.TemporaryFile(mode="w+")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Server:
        self.process = subprocess.Popen(
            [sys.executable, "app.py", "serve", "--port", str(self.port), *self.args],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("serve did not start listening in time")

    def stop(self, timeout: float = 20) -> str:
        """SIGTERM, wait for a clean exit; returns what it printed."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"serve did not stop on SIGTERM:\n{self.output()}") from None
        return self.output()

    def output(self) -> str:
        """Everything the server has printed so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def api(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def token(self, email: str, password: str) -> str:
        status, answer = self.api("POST", "/api/token/", body={"email": email, "password": password})
        assert status == 200, answer
        return answer["access"]


class RedisServer:
    """A real redis-server of our own on a loopback port, which a test can kill and start again
    on the same port (make test installs it)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        import redis  # installed with the app, imported only where Redis runs

        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: `make test` installs it"
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    assert self.process.poll() is None, "redis-server exited"
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """Gone at once, as in a crash: no goodbye to its clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
