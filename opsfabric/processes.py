"""Child processes in their own process groups: start, stop (SIGTERM, then SIGKILL), free ports, pid-file locks.

Used by the control room (``make serve``) and the local model server (``make llm``): a child in its
own group can be stopped with everything it started, and a pid file written with the leader's
start time lets ``make stop`` tell it from a reused process id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from opsfabric.locking import descendant_groups, group_alive, process_start_ticks

STOP_TIMEOUT = 10.0


@dataclass
class Child:
    """A child process in its own process group (so stopping it takes its children too)."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop its process group, then the groups its descendants made (a worker's flow runs run in sessions
        of their own: stopping the worker's group alone would leave them running)."""
        runs = descendant_groups(self.process.pid)
        stop_group(self.process.pid, self.process, timeout)  # the worker cancels its runs first, if it can
        for pgid in runs:
            stop_group(pgid, None, timeout)

    def record(self) -> list[int]:
        """[process group, start ticks of its leader]: enough for `make stop` to tell it from a reused id."""
        return [self.process.pid, process_start_ticks(self.process.pid)]


def stop_group(pgid: int, process: subprocess.Popen | None = None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group, wait, then SIGKILL what is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None:
                process.poll()  # reap the leader, or it stays a zombie and the group looks alive
            if not group_alive(pgid):
                return
            time.sleep(0.1)


def spawn(name: str, argv: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as handle:
        process = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=cwd, start_new_session=True
        )
    return Child(name, process, log_path)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def hold_exclusive(path: Path):
    """An open file holding an exclusive flock on ``path`` (kept by the caller), or None if another process holds it.

    The kernel drops the lock when the holder exits, killed or not."""
    import fcntl

    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle
