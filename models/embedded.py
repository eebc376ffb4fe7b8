"""The embedded database: SecantusDB as a child process, shared per data dir.

With `MONGODB_URI` empty the app runs SecantusDB (a MongoDB wire-protocol server)
as a separate process with its files in `<data-dir>/db`. It is never imported:
it is GPL-2.0, and a separate process keeps the licences apart.

Several commands may use one data dir at once (the server, and the CLI while it
runs), so the first one starts the database and records its pid and port in
`<data-dir>/db-server.json`; later ones reuse it. Each user holds a shared lock
on `db-users.lock` for as long as it runs, and whoever stops last (no shared
lock left but its own) stops the database: the last one out turns off the light.
`db-start.lock` serialises those decisions.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

LIFELINE = Path(__file__).with_name("lifeline.py")
START_TIMEOUT = 20.0  # seconds to wait for the first ping
JOIN_TIMEOUT = 15.0  # seconds a command waits for a running server to bring its database back
STOP_TIMEOUT = 10.0  # seconds the database gets to stop on SIGTERM before it is killed


class EmbeddedDatabaseError(RuntimeError):
    """The embedded database could not be started."""


class EmbeddedDatabase:
    """A SecantusDB server for one data dir, started or reused by `start()`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.storage = self.data_dir / "db"
        self.state_file = self.data_dir / "db-server.json"
        self.log_file = self.data_dir / "db-server.log"
        self.uri = ""
        self.started_here = False
        self._users_fd: int | None = None
        self._process: subprocess.Popen | None = None  # when this process started it (reaped by poll)
        self._lifeline: int | None = None  # its lifeline's write end (models/lifeline.py)

    def start(self) -> str:
        """Start the database (or join the running one) and return its URI."""
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.data_dir.chmod(0o700)  # private even when an older version made it 0755
            self.storage.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise EmbeddedDatabaseError(f"cannot use {self.storage} for the database: {e.strerror}") from None
        deadline = time.monotonic() + JOIN_TIMEOUT
        while True:
            with _locked(self.data_dir / "db-start.lock"):
                state = self._running_state()
                users_fd = os.open(self.data_dir / "db-users.lock", os.O_RDWR | os.O_CREAT, 0o600)
                if state is None and not _in_use(users_fd):
                    state = self._spawn()
                    self.started_here = True
                if state is not None:
                    fcntl.flock(users_fd, fcntl.LOCK_SH)
                    self._users_fd = users_fd
                    break
                os.close(users_fd)
            # A running server uses this data dir and its database is down: that server
            # restarts it (never two databases on one data dir); wait for it.
            if time.monotonic() > deadline:
                raise EmbeddedDatabaseError(
                    f"the database of the server using {self.data_dir} is not answering; try again in a moment")
            time.sleep(0.25)
        self.uri = _uri(state["port"])
        return self.uri

    def alive(self) -> bool:
        """Is the database process still there (a dead child is reaped, not counted)?"""
        if self._process is not None:
            return self._process.poll() is None
        state = self._read_state()
        return state is not None and _alive(state["pid"])

    def revive(self) -> bool:
        """Start the database again on the same port if it has died (PyMongo reconnects to
        it by itself); True if it had to. Raises EmbeddedDatabaseError if it cannot."""
        with _locked(self.data_dir / "db-start.lock"):
            if self.alive():
                return False
            port = int(self.uri.split(":")[2].split("/")[0])
            self._spawn(port)
            self.started_here = True
            return True

    def stop(self, within: float = STOP_TIMEOUT) -> None:
        """Leave the database; stop it if nobody else is using it, and kill it if it takes more
        than `within` seconds (its journal makes that recoverable; `serve` has written its
        samples by then, or given up on them)."""
        if self._users_fd is None:
            return
        with _locked(self.data_dir / "db-start.lock"):
            try:
                fcntl.flock(self._users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                last_user = True
            except BlockingIOError:
                last_user = False
            if last_user:
                state = self._read_state()
                if state:
                    _terminate(state["pid"], within)
                self.state_file.unlink(missing_ok=True)
                self._hold_lifeline(None)
            os.close(self._users_fd)
            self._users_fd = None

    def _hold_lifeline(self, fd: int | None) -> None:
        """Keep `fd` as the lifeline of the database this process started, letting go of the
        one before (a database that died, or was stopped). A database other commands still
        use keeps its lifeline until this process ends."""
        if self._lifeline is not None:
            os.close(self._lifeline)
        self._lifeline = fd

    def _read_state(self) -> dict | None:
        try:
            state = json.loads(self.state_file.read_text())
            return {"pid": int(state["pid"]), "port": int(state["port"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _running_state(self) -> dict | None:
        state = self._read_state()
        if state and _alive(state["pid"]) and _ping(state["port"], timeout=1.0):
            return state
        return None

    def _spawn(self, port: int | None = None) -> dict:
        port = port or _free_port()
        command = [
            # It ends with the command that started it, even one killed with SIGKILL (one SIGTERM,
            # on which it writes its files out): no orphan outlives the data dir's users.
            # A server that joined a database some command started restarts it (app.supervise).
            sys.executable, str(LIFELINE),
            sys.executable, "-m", "secantus",
            "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(self.storage),
            "--standalone", "--log-level", "WARNING",
        ]
        lifeline, held = os.pipe()  # this process holds `held` until it stops the database or ends
        try:
            with open(self.log_file, "ab") as log:
                # A session of its own: Ctrl-C in the terminal reaches the app, which
                # then stops the database in order, instead of both dying at once.
                process = subprocess.Popen(  # umask: its files are the owner's alone (0600)
                    command, stdout=log, stderr=log, stdin=lifeline, start_new_session=True, umask=0o077
                )
        except OSError:
            os.close(held)
            raise
        finally:
            os.close(lifeline)
        self._hold_lifeline(held)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedDatabaseError(
                    f"the embedded database exited at start (status {process.returncode}); see {self.log_file}"
                )
            if _ping(port, timeout=0.3):
                state = {"pid": process.pid, "port": port}
                self.state_file.write_text(json.dumps(state))
                self._process = process
                return state
            time.sleep(0.05)
        _terminate(process.pid)
        raise EmbeddedDatabaseError(
            f"the embedded database did not answer within {START_TIMEOUT:.0f} s; see {self.log_file}"
        )


class _locked:
    """An exclusive flock on a file for the length of a `with` block."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _in_use(users_fd: int) -> bool:
    """Does another command (a running server) use this data dir? (It holds db-users.lock shared.)"""
    try:
        fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(users_fd, fcntl.LOCK_UN)
    return False


def _uri(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Is `pid` running? A zombie (ended, not yet reaped by whoever inherited it) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: kill(0) is all there is to go on
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ping(port: int, timeout: float) -> bool:
    ms = int(timeout * 1000)
    client = MongoClient(_uri(port), serverSelectionTimeoutMS=ms, connectTimeoutMS=ms)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _terminate(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL: the database flushes its files on SIGTERM."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for it instead
            finished = 0 if _alive(pid) else pid
        if finished:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
