"""Start, watch and stop the local model server (``make llm``, ``make stop``, ``make serve``, test fixtures).

    make llm                    # foreground on 127.0.0.1:8089 (llm.server.port); Ctrl-C stops it
    make llm PORT=8090          # another port: export OPSFABRIC_LLM__SERVER__PORT=8090 for the clients too
    make stop                   # from another terminal

The server is a child in its own process group (``python -m opsfabric.llm.server``); its pid file
``<state_dir>/llm/server.json`` records the group leader's start time, so ``make stop`` never kills
a reused process id. Named errors: the extra is not installed (with the command), the port is
taken, the model file is missing, the server exited or did not answer in time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsfabric.llm.errors import LocalModelError
from opsfabric.llm.models import INSTALL_HINT, ModelFile, resolve_model
from opsfabric.llm.server import NATIVE_TOOLS_FORMAT
from opsfabric.llm.settings import local_url

log = logging.getLogger("opsfabric.llm")
PID_FILE = "server.json"
PROFILE = "configs/profiles/local-llm.yaml"


def check_extra() -> None:
    """Raise a named error when llama-cpp-python (with its server extra) is not installed."""
    missing = [m for m in ("llama_cpp", "uvicorn", "sse_starlette", "starlette_context") if importlib.util.find_spec(m) is None]
    if missing:
        raise LocalModelError(f"the local-model extra is not installed (missing: {', '.join(missing)})", hint=INSTALL_HINT)


def served_aliases(settings: Any) -> dict[str, dict]:
    """alias -> model labels (file, sha256, ...) plus the chat format the server uses for that alias."""
    llm = settings.llm
    aliases: dict[str, dict] = {}
    for name in llm.server.models:
        model: ModelFile = resolve_model(name, llm.catalog[name], settings.state_dir)
        aliases[name] = {**model.to_dict(), "served_chat_format": model.chat_format, "tool_calling": "json_schema"}
        if llm.server.native_tools_alias:
            aliases[f"{name}-native-tools"] = {**model.to_dict(), "served_chat_format": NATIVE_TOOLS_FORMAT, "tool_calling": "native"}
    return aliases


@dataclass
class LocalServer:
    """A running local model server (a child process in its own group)."""

    child: Any  # opsfabric.processes.Child
    host: str
    port: int
    aliases: dict[str, dict] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return local_url(self.host, self.port)

    def record(self) -> list[int]:
        return self.child.record()

    def stop(self) -> None:
        self.child.stop()


def start_server(settings: Any, *, port: int | None = None, stopping: threading.Event | None = None,
                 on_spawn: Any = None) -> LocalServer:
    """Resolve the models, start the server on ``port`` (default ``llm.server.port``) and wait until it answers.

    Raises:
        LocalModelError: extra missing, model file missing, port taken, the server exited or did not answer.
    """
    from opsfabric.processes import port_free, spawn

    check_extra()
    cfg = settings.llm.server
    port = port or cfg.port
    if not port_free(cfg.host, port):
        raise LocalModelError(f"port {port} on {cfg.host} is in use (another `make llm`, or another program)",
                              hint=f"stop it (make stop), or pick another port: make llm PORT={port + 1} "
                              f"(and export OPSFABRIC_LLM__SERVER__PORT={port + 1} where the clients run)")
    aliases = served_aliases(settings)
    folder = settings.state_dir / "llm"
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"server-{port}.json"
    config_path.write_text(json.dumps({"host": cfg.host, "port": port, "n_threads": cfg.n_threads, "n_ctx": cfg.n_ctx,
                                       "seed": cfg.seed, "aliases": aliases}, indent=1))
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(cfg.n_threads)}
    child = spawn("local-llm", [sys.executable, "-m", "opsfabric.llm.server", "--config", str(config_path), "--parent-pid", str(os.getpid())],
                  folder / f"server-{port}.log", env)
    server = LocalServer(child, cfg.host, port, aliases)
    try:
        if on_spawn is not None:
            on_spawn(server)  # e.g. the pid file: `make stop` must find a server that is still starting
        wait_ready(server, cfg.start_timeout_seconds, stopping)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: LocalServer, timeout: float, stopping: threading.Event | None = None) -> None:
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline and not (stopping is not None and stopping.is_set()):
        if not server.child.alive():
            raise LocalModelError(f"the local model server exited with status {server.child.process.returncode}:\n{server.child.tail()}",
                                  hint=f"full log: {server.child.log_path}")
        try:  # ready when *our* child answers: another program that took the port in between is not us
            root = server.base_url[: -len("/v1")]
            with urllib.request.urlopen(f"{root}/opsfabric/model-info", timeout=2) as response:
                if response.status == 200 and json.loads(response.read()).get("pid") == server.child.process.pid:
                    return
                last = "another process answers on this port"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.2)
    if stopping is not None and stopping.is_set():
        return
    raise LocalModelError(f"the local model server did not answer {server.base_url}/models within {timeout:.0f} s ({last})",
                          hint=f"see {server.child.log_path}")


def pid_file(settings: Any) -> Path:
    return settings.state_dir / "llm" / PID_FILE


def read_pid_file(settings: Any) -> dict | None:
    try:
        return json.loads(pid_file(settings).read_text())
    except (OSError, ValueError):
        return None


def serve_foreground(settings: Any, port: int | None = None) -> int:
    """``make llm``: run the server until SIGINT/SIGTERM (or ``make stop``) or until it dies; no process is left."""
    from opsfabric.files import write_atomic
    from opsfabric.locking import process_start_ticks
    from opsfabric.processes import hold_exclusive

    folder = settings.state_dir / "llm"
    folder.mkdir(parents=True, exist_ok=True)
    guard = hold_exclusive(folder / "server.lock")
    if guard is None:
        other = read_pid_file(settings) or {}
        raise LocalModelError(f"a local model server already runs from this state folder ({other.get('url', 'starting')})",
                              hint="make stop")
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda s, f: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        started = time.monotonic()

        def record(child: LocalServer, state: str) -> None:
            write_atomic(pid_file(settings), json.dumps({"pid": os.getpid(), "started": process_start_ticks(os.getpid()),
                                                         "group": child.record(), "url": child.base_url, "state": state}))

        server = start_server(settings, port=port, stopping=stopping, on_spawn=lambda child: record(child, "starting"))
        if stopping.is_set():
            return 0
        record(server, "ready")
        for alias, m in server.aliases.items():
            print(f"serving {alias}: {m['file']} sha256:{m['sha256'][:16]} ({m['kind']}, chat_format {m['served_chat_format']})")
        print(f"local model server ready in {time.monotonic() - started:.1f} s: {server.base_url}", flush=True)
        env = "" if server.port == settings.llm.server.port else f"OPSFABRIC_LLM__SERVER__PORT={server.port} "
        print(f"use it: {env}python -m flows.agent ask \"...\" --config {PROFILE}   (Ctrl-C or make stop to end)", flush=True)
        while not stopping.is_set():
            if not server.child.alive():
                log.error("the local model server exited with status %s:\n%s", server.child.process.returncode, server.child.tail())
                return 1
            stopping.wait(0.5)
        return 0
    finally:
        if server is not None:
            server.stop()
        info = read_pid_file(settings)
        if info and info.get("pid") == os.getpid():
            pid_file(settings).unlink(missing_ok=True)
        guard.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_local_server(settings: Any, timeout: float = 30.0) -> str | None:
    """``make stop``: end a running ``make llm`` (its launcher, then its server group); None when none runs."""
    from opsfabric.locking import process_alive
    from opsfabric.processes import stop_group

    info = read_pid_file(settings)
    if not info:
        return None
    host, pid = socket.gethostname(), int(info["pid"])
    if process_alive(host, pid, info.get("started")):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process_alive(host, pid, info.get("started")):
            time.sleep(0.2)
        if process_alive(host, pid, info.get("started")):
            os.kill(pid, signal.SIGKILL)
    pgid, started = info.get("group") or [None, None]
    if pgid and process_alive(host, pgid, started):  # the launcher was killed outright: its server is still up
        stop_group(int(pgid))
    pid_file(settings).unlink(missing_ok=True)
    return f"local model server ({info.get('url')}) stopped"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsfabric.llm.launcher", description="The local model server (make llm).")
    parser.add_argument("command", nargs="?", choices=["serve", "stop", "check"], default="serve")
    parser.add_argument("--port", type=int, default=None, help="listen port (default llm.server.port of the configuration)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from opsfabric.settings import load_settings

    settings = load_settings()
    if args.command == "stop":
        print(stop_local_server(settings) or "no local model server is running")
        return 0
    if args.command == "check":  # the extra and every served model file, without starting anything
        check_extra()
        for alias, m in served_aliases(settings).items():
            print(f"{alias}: {m['path']} sha256:{m['sha256']}")
        return 0
    return serve_foreground(settings, args.port)


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
