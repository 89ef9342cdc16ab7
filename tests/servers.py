"""Real servers for the operations tests, started as child processes on free loopback ports.

Each ``start_*`` function returns a :class:`Server` whose ``stop()`` kills the whole process
group (SIGTERM, then SIGKILL: Prefect's server and workers may ignore the first SIGTERM once
their peer is gone). Logs go to a file beside the server's data so a failed test can show them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    log: Path
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.process, timeout)


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout)


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # its own process group: stop() takes its children too
        )


def wait_until(check: Callable[[], bool], server: Server, timeout: float, what: str) -> None:
    """Poll ``check`` until it returns True; stop the server and fail with its log if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.tail()}")
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means "not ready yet"
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{server.name}: {what} not ready within {timeout:.0f} s ({last}):\n{server.tail()}")


def wait_http(url: str, server: Server, timeout: float, expect: int = 200) -> None:
    def answers() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status != expect:
                raise RuntimeError(f"HTTP {response.status}")
        return True

    wait_until(answers, server, timeout, f"an answer from {url}")


def start_prefect_server(home: Path, extra_env: dict[str, str] | None = None, timeout: float = 180.0) -> Server:
    """``prefect server start`` with the UI on, on a free port, its own PREFECT_HOME (SQLite by default).

    The UI asks the API at PREFECT_UI_API_URL, which follows PREFECT_SERVER_API_PORT rather than
    ``--port``: both are set. Returns once ``/api/health`` answers.
    """
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the server process must not talk to itself through a client API URL
        "PREFECT_API_URL": "",
        **(extra_env or {}),
    }
    home.mkdir(parents=True, exist_ok=True)
    process = spawn(
        "prefect server",
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        home / "server.log",
        env,
    )
    server = Server("prefect server", process, home / "server.log", url=api_url, env={"PREFECT_API_URL": api_url})
    wait_http(f"{api_url}/health", server, timeout)
    return server


def start_worker(pool: str, api_url: str, home: Path, cwd: Path, extra_env: dict[str, str] | None = None) -> Server:
    """``prefect worker start`` for a process work pool (created by the caller or by the worker)."""
    env = {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(home), **(extra_env or {})}
    process = spawn(
        f"worker {pool}",
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
        home / f"worker-{pool}.log",
        env,
        cwd=cwd,
    )
    return Server(f"worker {pool}", process, home / f"worker-{pool}.log", url=api_url)


def snapshot_repo(destination: Path, source: Path | None = None, branch: str = "main") -> str:
    """A new git repository holding the working tree of ``source`` as git sees it (tracked and untracked-not-ignored
    files, edits included), committed on ``branch``; returns its ``file://`` URL.

    Deployments are registered from a git source and a worker runs committed code: the tests deploy
    what is on disk, not the checkout's last commit (on CI the two are the same).
    """
    import shutil

    from opsfabric.settings import PROJECT_ROOT

    source = source or PROJECT_ROOT
    listed = subprocess.run(["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = source / name
        if src.is_file():  # deleted-but-tracked files are skipped
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, destination / name)
    env = {**os.environ, "GIT_AUTHOR_NAME": "tests", "GIT_AUTHOR_EMAIL": "tests@localhost",
           "GIT_COMMITTER_NAME": "tests", "GIT_COMMITTER_EMAIL": "tests@localhost"}
    for argv in (["init", "-q", "-b", branch], ["add", "-A"], ["commit", "-q", "-m", "snapshot of the working tree"]):
        subprocess.run(["git", "-C", str(destination), *argv], check=True, env=env, capture_output=True)
    return destination.resolve().as_uri()


@contextmanager
def prefect_client_at(api_url: str):
    """Point this process's Prefect client at ``api_url``; on exit, flush what its background workers still
    hold (logs, events) while that server is up.

    Prefect keeps one log worker and one events worker per API URL for the life of the process. One
    left holding events for a server that was stopped later makes the next ``drain_all`` (e.g. the
    teardown of ``prefect_test_harness`` at the end of the session) wait for a server that is gone.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            yield
        finally:
            drain_prefect_workers()


def drain_prefect_workers(timeout: float = 20.0) -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=timeout)
