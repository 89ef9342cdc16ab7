"""``python -m deployments.control_room`` (make serve): every deployment with its schedule and automation; SIGINT leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsfabric.locking import descendant_groups, group_alive
from deployments.definitions import DEPLOYMENTS
from opsfabric.settings import PROJECT_ROOT
from tests.servers import free_port, prefect_client_at

pytestmark = pytest.mark.server


def _wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return
        if process.poll() is not None:
            pytest.fail(f"control room exited with {process.returncode}:\n{content[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {text!r} after {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.mark.parametrize("ending", ["ctrl-c", "killed-with-its-worker-then-make-stop"])
def test_control_room_registers_every_deployment_and_stopping_leaves_no_process(tmp_path, source_repo, ending):
    """Ctrl-C (SIGINT) stops server, worker and a flow run still going; so does `make stop` after the control room
    itself was killed outright (it finds them in its pid file, checked against their start times)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port, state = free_port(), tmp_path / "state"
    env = {
        **os.environ,
        "OPSFABRIC_STATE_DIR": str(state),
        "PREFECT_HOME": str(state / "prefect"),
        "OPSFABRIC_ORCHESTRATION__SOURCE__URL": source_repo.url,
        "OPSFABRIC_ORCHESTRATION__SOURCE__REF": source_repo.ref,
    }
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "control_room.log"
    with log.open("wb") as out:
        room = subprocess.Popen([sys.executable, "-m", "deployments.control_room", "--port", str(port)],
                                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    run_groups: set[int] = set()
    info = {"groups": {}}
    try:
        _wait_for_line(log, "control room ready", room)
        assert f"Prefect UI: http://127.0.0.1:{port}" in log.read_text()
        info = json.loads((state / "control_room.json").read_text())
        assert info["pid"] == room.pid and set(info["groups"]) == {"server", "worker"}

        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            with get_client(sync_client=True) as client:
                deployments = {d.name: d for d in client.read_deployments()}
                pool = client.read_work_pool("opsfabric")
                automations = client.read_automations()
        assert pool.type == "process"
        assert set(deployments) == {spec.name for spec in DEPLOYMENTS}
        for spec in DEPLOYMENTS:
            deployment = deployments[spec.name]
            assert [s.schedule.cron for s in deployment.schedules] == ([spec.cron] if spec.cron else []), spec.name
            assert deployment.work_pool_name == "opsfabric" and deployment.parameters == spec.parameters
            assert deployment.pull_steps[0]["prefect.deployments.steps.git_clone"]["repository"] == source_repo.url
            env_of_runs = deployment.job_variables["env"]
            assert env_of_runs["OPSFABRIC_STATE_DIR"] == str(state) and env_of_runs["OPSFABRIC_ORCHESTRATION__RETRAIN_VIA"] == "event"
        [retrain] = [a for a in automations if a.name == "retrain-on-drift-event"]
        assert retrain.trigger.expect == {"opsfabric.drift.detected"}
        assert retrain.actions[0].deployment_id == deployments["retrain-on-drift"].id

        # a flow run still going when the control room stops: an agent request paused for approval.
        # Prefect starts it in a process session of its own, outside the worker's process group.
        with prefect_client_at(f"http://127.0.0.1:{port}/api"):
            paused = _paused_agent_run(port)
        run_groups = set(descendant_groups(room.pid)) - {pgid for pgid, _ in info["groups"].values()}
        assert run_groups, f"the paused flow run {paused} has no process group of its own under the control room"
        if ending == "killed-with-its-worker-then-make-stop":
            _wait_until(lambda: {g for g, _ in json.loads((state / "control_room.json").read_text()).get("runs", [])} >= run_groups,
                        "the control room records its flow runs' process groups")
            room.kill()  # no clean-up at all, and the worker dies too (OOM, kill -9): only the pid file knows the flow run
            room.wait(30)
            os.killpg(info["groups"]["worker"][0], signal.SIGKILL)
            stopped = subprocess.run([sys.executable, "-m", "deployments.control_room", "stop"], cwd=PROJECT_ROOT, env=env,
                                     capture_output=True, text=True, timeout=120)
            assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr[-2000:]
            status = 0
    finally:
        if room.poll() is None:
            room.send_signal(signal.SIGINT)
            try:
                status = room.wait(60)
            except subprocess.TimeoutExpired:
                room.kill()
                raise
    survivors = {name: pgid for name, (pgid, _started) in info["groups"].items() if group_alive(pgid)}
    survivors |= {f"flow run group {pgid}": pgid for pgid in run_groups if group_alive(pgid)}
    for pgid in survivors.values():  # never leave them to the rest of the session
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert status == 0, log.read_text()[-3000:]
    assert not survivors, f"outlived the control room: {sorted(survivors)}"
    assert not (state / "control_room.json").exists()


def _wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out: {what}")


def _paused_agent_run(port: int, timeout: float = 180.0) -> str:
    """Start agent-ask as the UI's Run button does (replay backend, a risky request) and wait until it pauses."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    started = run_deployment("agent-ask/agent-ask", parameters={"request": "retrain the model on batch 3", "backend": "replay"},
                             timeout=0)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(started.id)
            if run.state and run.state.name == "Paused":
                return str(run.id)
            assert not (run.state and run.state.is_final()), f"agent-ask ended {run.state!r} instead of pausing"
            time.sleep(0.5)
    pytest.fail(f"agent-ask flow run {started.id} did not pause within {timeout:.0f} s")
