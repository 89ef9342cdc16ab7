"""The one lock behind every alias move and registry write, tested with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsfabric.errors import LockTimeoutError
from opsfabric.locking import exclusive
from opsfabric.settings import PROJECT_ROOT, load_settings

HOLDER = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from opsfabric.settings import load_settings
from opsfabric.locking import exclusive
log, hold, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
settings = load_settings()
with open(log, "a") as f: f.write(f"{name} enter {time.time()}\\n")
with exclusive(settings, "registry-x", purpose="test " + name):
    with open(log, "a") as f: f.write(f"{name} start {time.time()}\\n"); f.flush()
    time.sleep(hold)
    with open(log, "a") as f: f.write(f"{name} end {time.time()}\\n")
"""


def _spawn(tmp_path: Path, name: str, hold: float, **env) -> subprocess.Popen:
    environ = {**os.environ, "OPSFABRIC_STATE_DIR": str(tmp_path / "state"), **env}
    stderr = open(tmp_path / f"{name}.stderr", "w")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "log"), str(hold), name], cwd=PROJECT_ROOT, env=environ, stderr=stderr
    )


def _someone_waited(tmp_path: Path, names: set[str]) -> bool:
    """Whether a holder logged that it had to wait: the processes really overlapped."""
    return any("waiting for lock registry-x" in (tmp_path / f"{n}.stderr").read_text() for n in names)


def _events(log: Path) -> dict[tuple[str, str], float]:
    """(holder, enter|start|end) -> time."""
    return {(name, event): float(stamp) for name, event, stamp in (line.split() for line in log.read_text().splitlines())}


def _intervals(log: Path) -> dict[str, list[float]]:
    """holder -> [start, end] of its critical section."""
    events = _events(log)
    return {name: [events[(name, "start")], events[(name, "end")]] for name, event in events if event == "start" and (name, "end") in events}


def _contended(log: Path, names: set[str]) -> bool:
    """Whether every holder asked for the lock before the first one released it (a real contest)."""
    events = _events(log)
    return max(events[(n, "enter")] for n in names) < min(events[(n, "end")] for n in names)


def _assert_serialised(log: Path, names: set[str]) -> None:
    spans = _intervals(log)
    assert set(spans) == names and all(len(s) == 2 for s in spans.values()), spans
    ordered = sorted(spans.values())
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        assert start >= end, f"critical sections overlap: {spans}"


def _wait_for(log: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {log}")


@pytest.mark.unit
def test_file_lock_serialises_real_processes(tmp_path):
    # Each holds it for 3 s: far longer than the spread of the children's start-up, so they overlap
    procs = [_spawn(tmp_path, f"p{i}", 3.0) for i in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    _assert_serialised(tmp_path / "log", {"p0", "p1", "p2"})
    assert _contended(tmp_path / "log", {"p0", "p1", "p2"}) and _someone_waited(tmp_path, {"p0", "p1", "p2"})


@pytest.mark.unit
def test_a_killed_holder_releases_the_file_lock(tmp_path):
    holder = _spawn(tmp_path, "holder", 600)
    _wait_for(tmp_path / "log", "holder start")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    waiter = _spawn(tmp_path, "waiter", 0)
    assert waiter.wait(timeout=60) == 0
    assert "waiter end" in (tmp_path / "log").read_text()


@pytest.mark.unit
def test_timeout_names_the_resource_and_the_holder(tmp_path):
    holder = _spawn(tmp_path, "holder", 600)
    try:
        _wait_for(tmp_path / "log", "holder start")
        settings = load_settings(state_dir=tmp_path / "state", orchestration={"lock": {"kind": "file", "timeout_seconds": 0.3}})
        with pytest.raises(LockTimeoutError, match=rf"lock 'registry-x' .* is held by pid {holder.pid} .*test holder"):
            with exclusive(settings, "registry-x", purpose="promote"):
                pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.unit
def test_reentrant_in_one_thread(tmp_path):
    settings = load_settings(state_dir=tmp_path / "state", orchestration={"lock": {"kind": "file", "timeout_seconds": 0.5}})
    with exclusive(settings, "r", purpose="outer"):
        with exclusive(settings, "r", purpose="inner"):
            pass
        # still held by us after the inner block: another thread would wait (and time out here)
        import threading

        errors = []

        def other():
            try:
                with exclusive(settings, "r", purpose="other thread"):
                    pass
            except LockTimeoutError as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1


@pytest.mark.flows
def test_prefect_global_concurrency_limit_serialises_real_processes(tmp_path, prefect_api):
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "OPSFABRIC_ORCHESTRATION__LOCK__KIND": "prefect"}
    procs = [_spawn(tmp_path, f"p{i}", 3.0, **env) for i in range(2)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    _assert_serialised(tmp_path / "log", {"p0", "p1"})
    assert _contended(tmp_path / "log", {"p0", "p1"})
    # the limit exists on the server, one slot, named after the resource
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("opsfabric-registry-x")
    assert limit.limit == 1 and limit.active_slots == 0


@pytest.mark.unit
def test_descendant_groups_finds_a_grandchild_in_a_session_of_its_own(tmp_path):
    """What a Prefect worker does with a flow run: it starts it in a new session; stopping the worker's group misses it."""
    from opsfabric.locking import descendant_groups

    marker = tmp_path / "grandchild.pid"
    code = ("import subprocess, time, pathlib; p = subprocess.Popen(['sleep', '60'], start_new_session=True); "
            f"pathlib.Path({str(marker)!r}).write_text(str(p.pid)); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(marker.read_text())
        assert descendant_groups(parent.pid) == [grandchild]  # its own group (== its pid), not the parent's
        assert descendant_groups(grandchild) == []
    finally:
        for group in (parent.pid, int(marker.read_text()) if marker.exists() else None):
            if group:
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        parent.wait()


@pytest.mark.unit
def test_a_running_control_room_is_found_from_its_pid_file(tmp_path):
    """`make run` while `make serve` runs reports to the control room's server instead of starting a second one."""
    import json

    from opsfabric.locking import process_start_ticks
    from opsfabric.runtime_env import running_control_room_api

    room = subprocess.Popen(["sleep", "30"])
    try:
        info = {"pid": room.pid, "started": process_start_ticks(room.pid), "host": "127.0.0.1", "port": 4311,
                "groups": {"server": [1, 1], "worker": [2, 2]}}
        (tmp_path / "control_room.json").write_text(json.dumps(info))
        assert running_control_room_api(tmp_path) == "http://127.0.0.1:4311/api"
        (tmp_path / "control_room.json").write_text(json.dumps({**info, "started": info["started"] + 1}))  # a reused pid
        assert running_control_room_api(tmp_path) is None
    finally:
        room.kill()
        room.wait()
    (tmp_path / "control_room.json").write_text(json.dumps(info))
    assert running_control_room_api(tmp_path) is None  # its process is gone
