"""Scale-out is a configuration switch: a fresh process told by its environment alone runs its tasks on Dask."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from opsfabric.settings import PROJECT_ROOT


@pytest.mark.flows
def test_a_fresh_process_runs_validation_on_dask_workers_by_environment_only(prefect_api, ml_overlay):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowRunFilter, FlowRunFilterStartTime, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    started = datetime.now(timezone.utc)
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "OPSFABRIC_CONFIG": ml_overlay()[0],
        "OPSFABRIC_ORCHESTRATION__TASK_RUNNER": "dask",
        "OPSFABRIC_ORCHESTRATION__DASK_N_WORKERS": "2",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.validate"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr[-3000:]
    assert stdout.count('"passed": true') == 5, stdout

    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(
            flow_filter=FlowFilter(name={"any_": ["validate"]}),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
        )
        logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))]
    where = [re.fullmatch(r"validated (\S+) on (dask worker tcp://\S+ \(pid (\d+)\)|process (\d+))", m) for m in logs if m.startswith("validated ")]
    assert len(where) == 5, logs
    # Every file was validated in a Dask worker process, none in the flow's own process.
    assert all(m.group(3) for m in where), [m.group(0) for m in where]
    assert child.pid not in {int(m.group(3)) for m in where}


@pytest.mark.unit
def test_threads_by_default(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.runners import configured_task_runner

    monkeypatch.delenv("OPSFABRIC_ORCHESTRATION__TASK_RUNNER", raising=False)
    assert isinstance(configured_task_runner(), ThreadPoolTaskRunner)
