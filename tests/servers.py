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
from dataclasses import dataclass, field
from pathlib import Path

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
    handle = open(log, "ab")
    return subprocess.Popen(
        argv,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,  # its own process group: stop() takes its children too
    )


def wait_http(url: str, server: Server, timeout: float, expect: int = 200) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == expect:
                    return
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{server.name} did not answer {url} within {timeout:.0f} s ({last}):\n{server.tail()}")


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
