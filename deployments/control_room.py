"""The control room: ``make serve`` starts a Prefect server with its UI, registers every deployment and runs a worker.

    make serve                 # http://127.0.0.1:4200 ; Ctrl-C stops everything
    make serve PORT=4300       # another port (or OPSFABRIC_ORCHESTRATION__CONTROL_ROOM__PORT)
    make stop                  # from another terminal

What it does, in order:

1. ``prefect server start`` on 127.0.0.1 with ``PREFECT_HOME=<state_dir>/prefect``: the same
   SQLite database ``make run`` writes, so earlier runs are in the UI.
2. creates the process work pool ``opsfabric`` (if missing);
3. registers every deployment of ``deployments/definitions.py`` from the git source
   (``orchestration.source``) with its schedule, and the retrain deployment's automation on
   ``opsfabric.drift.detected``;
4. starts one process worker; each flow run clones the repository, and finds this checkout's data
   and state folder through the deployments' job environment (``deployments.deploy.runtime_env``);
   retraining goes through the drift event (``orchestration.retrain_via: event``);
5. waits. SIGINT/SIGTERM (or ``make stop``, through the pid file ``<state_dir>/control_room.json``)
   stops the worker and the server by process group, with a SIGKILL fallback: a worker may ignore
   the first SIGTERM once its server is gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from opsfabric.runtime_env import configure_runtime_env

configure_runtime_env()

from opsfabric.errors import OpsFabricError  # noqa: E402
from opsfabric.files import write_atomic  # noqa: E402
from opsfabric.locking import descendant_groups, process_alive, process_start_ticks  # noqa: E402
from opsfabric.processes import Child, hold_exclusive, port_free, spawn, stop_group  # noqa: E402
from opsfabric.runtime_env import CONTROL_ROOM_FILE, read_control_room, running_control_room  # noqa: E402
from opsfabric.settings import Settings, load_settings  # noqa: E402

log = logging.getLogger("opsfabric.control_room")
VENV_BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 180.0  # a fresh SQLite database answers after ~25 s on a busy 2-core machine
STOP_TIMEOUT = 10.0


class ControlRoomError(OpsFabricError):
    """The control room cannot start (port taken, already running, server did not come up)."""


# ---- processes (opsfabric.processes) -----------------------------------------------------
def wait_healthy(api_url: str, server: Child, timeout: float, stopping: threading.Event | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline and not (stopping is not None and stopping.is_set()):
        if not server.alive():
            raise ControlRoomError(f"the Prefect server exited with status {server.process.returncode}:\n{server.tail()}",
                                   hint=f"full log: {server.log_path}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    if stopping is not None and stopping.is_set():
        return
    raise ControlRoomError(f"the Prefect server did not answer {api_url}/health within {timeout:.0f} s ({last})",
                           hint=f"see {server.log_path}")


def become_subreaper() -> None:
    """Orphaned descendants (a flow run whose worker died) are re-parented to this process, not to init,
    so stopping the control room still finds them (Linux prctl PR_SET_CHILD_SUBREAPER; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("no PR_SET_CHILD_SUBREAPER here: orphaned flow runs are not collected")


# ---- the pid file ------------------------------------------------------------------------------
def pid_file(settings: Settings) -> Path:
    return settings.state_dir / CONTROL_ROOM_FILE


# ---- the steps -----------------------------------------------------------------------------
def start_server(settings: Settings, host: str, port: int, logs: Path) -> tuple[Child, str]:
    api_url = f"http://{host}:{port}/api"
    env = {
        "PREFECT_HOME": os.environ["PREFECT_HOME"],
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": api_url,  # the UI asks the API here (it follows this, not --port)
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_API_URL": "",  # the server must not talk to itself through a client URL
    }
    server = spawn("prefect server", [str(VENV_BIN / "prefect"), "server", "start", "--host", host, "--port", str(port)],
                   logs / "server.log", env)
    return server, api_url


def ensure_work_pool(pool: str) -> bool:
    """Create the process work pool unless it exists; True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            return False
    return True


def register_deployments(settings: Settings, pool: str) -> list[str]:
    from deployments.deploy import deploy_all, runtime_env
    from deployments.source import resolve_git_source, uncommitted_changes

    source = resolve_git_source(settings)
    log.info("code source: %s, branch %s (%s)", source.url, source.ref, source.chosen_because)
    dirty = uncommitted_changes()
    if dirty:
        log.warning("%d uncommitted change(s) in this checkout are NOT what the worker runs: it clones %s@%s", dirty, source.url, source.ref)
    return deploy_all(pool, source=source, env=runtime_env(settings, retrain_via="event"), settings=settings)


def start_worker(settings: Settings, pool: str, api_url: str, logs: Path) -> Child:
    env = {"PREFECT_API_URL": api_url, "OPSFABRIC_ORCHESTRATION__RETRAIN_VIA": "event", "OPSFABRIC_STATE_DIR": str(settings.state_dir)}
    work_dir = logs / "worker"
    work_dir.mkdir(parents=True, exist_ok=True)
    return spawn(f"worker {pool}", [str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                 logs / "worker.log", env, cwd=work_dir)


def serve_control_room(settings: Settings, port: int | None = None, ready: threading.Event | None = None) -> int:
    """Run the control room until SIGINT/SIGTERM or until the server or worker dies; returns an exit status."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    room = settings.orchestration.control_room
    host, port, pool = room.host, port or room.port, room.work_pool
    state = pid_file(settings)
    state.parent.mkdir(parents=True, exist_ok=True)
    guard = hold_exclusive(state.with_suffix(".lock"))  # held for our lifetime: two `make serve` cannot both start
    other = running_control_room(settings.state_dir)
    if guard is None or other is not None:
        other = other or {}
        raise ControlRoomError(f"a control room already runs (pid {other.get('pid', '?')}, {other.get('ui', 'starting')})",
                               hint="make stop")
    if not port_free(host, port):
        raise ControlRoomError(f"port {port} on {host} is in use (make ui, another make serve, or another program)",
                               hint="stop it, or pick another port: make serve PORT=4300")
    logs = settings.state_dir / "control_room"
    children: list[Child] = []
    stopping = threading.Event()

    def on_signal(signum, _frame):
        log.info("%s: stopping", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    become_subreaper()
    try:
        server, api_url = start_server(settings, host, port, logs)
        children.append(server)
        state.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(state, json.dumps({
            "pid": os.getpid(), "started": process_start_ticks(os.getpid()), "host": host, "port": port,
            "ui": f"http://{host}:{port}", "groups": {"server": server.record()},
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }))
        log.info("Prefect server starting (PREFECT_HOME=%s, log %s)", os.environ["PREFECT_HOME"], server.log_path)
        wait_healthy(api_url, server, SERVER_START_TIMEOUT, stopping)
        if stopping.is_set():
            return 0
        print(f"Prefect UI: http://{host}:{port}", flush=True)
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            created = ensure_work_pool(pool)
            log.info("work pool %s %s", pool, "created" if created else "exists")
            ids = register_deployments(settings, pool)
            log.info("registered %d deployments with work pool %s", len(ids), pool)
        if stopping.is_set():  # Ctrl-C while registering: no worker
            return 0
        if settings.uses_local_llm:  # the local-llm profile is active: its model server runs beside the worker
            from opsfabric.llm.launcher import start_server as start_local_llm

            local_llm = start_local_llm(settings, stopping=stopping)
            children.append(local_llm.child)
            if stopping.is_set():  # Ctrl-C while the model server started: no worker, no "ready"
                return 0
            info = read_control_room(settings.state_dir) or {}
            info.setdefault("groups", {})["local_llm"] = local_llm.record()
            write_atomic(state, json.dumps(info))
            print(f"local model server: {local_llm.base_url}", flush=True)
        worker = start_worker(settings, pool, api_url, logs)
        children.append(worker)
        info = read_control_room(settings.state_dir) or {}
        info["groups"] = {**info.get("groups", {}), "server": server.record(), "worker": worker.record()}
        write_atomic(state, json.dumps(info))
        print(f"control room ready: UI http://{host}:{port}, worker log {worker.log_path}; Ctrl-C or make stop to end", flush=True)
        if ready is not None:
            ready.set()
        recorded: list[list[int]] = []
        while not stopping.is_set():
            dead = [c for c in children if not c.alive()]
            if dead:
                log.error("%s exited with status %s:\n%s", dead[0].name, dead[0].process.returncode, dead[0].tail())
                return 1
            runs = [[g, process_start_ticks(g)] for g in descendant_groups(worker.process.pid)]
            if runs != recorded:  # the flow runs' groups, for `make stop` if this process is killed outright
                info["runs"], recorded = runs, runs
                write_atomic(state, json.dumps(info))
            stopping.wait(1.0)
        return 0
    finally:
        for child in reversed(children):  # worker first: it needs the server to report its runs
            child.stop()
        for pgid in descendant_groups(os.getpid()):  # orphans re-parented to us (subreaper): a run whose worker died
            stop_group(pgid)
        if (read_control_room(settings.state_dir) or {}).get("pid") == os.getpid():
            state.unlink(missing_ok=True)
        guard.close()  # releases the flock
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("control room stopped")


def stop_control_room(settings: Settings, timeout: float = 60.0) -> str:
    """``make stop``: SIGTERM the running control room; SIGKILL its process groups if it does not end."""
    state = pid_file(settings)
    info = read_control_room(settings.state_dir)
    if not info:
        return f"no control room is running (no {state})"
    pid = int(info["pid"])
    if process_alive(socket.gethostname(), pid, info.get("started")):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process_alive(socket.gethostname(), pid, info.get("started")):
            time.sleep(0.2)
        if process_alive(socket.gethostname(), pid, info.get("started")):
            os.kill(pid, signal.SIGKILL)
    # whatever the control room could not stop itself (it was killed outright): flow runs first, then worker, server
    for pgid, started in [*(info.get("runs") or []), *reversed(list((info.get("groups") or {}).values()))]:
        if process_alive(socket.gethostname(), pgid, started):  # the same leader, not a reused id
            stop_group(int(pgid))
    state.unlink(missing_ok=True)
    return f"control room (pid {pid}, {info.get('ui')}) stopped"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.control_room", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=["serve", "stop"], default="serve")
    parser.add_argument("--port", type=int, default=None, help="API and UI port (default orchestration.control_room.port, 4200)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings()
    if args.command == "stop":
        from opsfabric.llm.launcher import stop_local_server

        print(stop_control_room(settings))  # stops a model server the control room started, with it
        stopped = stop_local_server(settings)
        if stopped:
            print(stopped)
        return 0
    return serve_control_room(settings, args.port)


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
