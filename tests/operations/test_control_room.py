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

from deployments.control_room import group_alive
from deployments.definitions import DEPLOYMENTS
from opsfabric.settings import PROJECT_ROOT
from tests.servers import free_port

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


def test_control_room_registers_every_deployment_and_sigint_leaves_no_process(tmp_path, source_repo):
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
    finally:
        room.send_signal(signal.SIGINT)
        try:
            status = room.wait(60)
        except subprocess.TimeoutExpired:
            room.kill()
            raise
    assert status == 0, log.read_text()[-3000:]
    assert not [name for name, (pgid, _started) in info["groups"].items() if group_alive(pgid)]
    assert not (state / "control_room.json").exists()
