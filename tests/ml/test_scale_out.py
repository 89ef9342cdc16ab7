"""Scale-out is a configuration switch: the same flow runs its tasks on a Dask cluster."""

from __future__ import annotations

import pytest


@pytest.mark.flows
def test_dask_task_runner_by_environment_only(prefect_api, ml_overlay, monkeypatch):
    from prefect_dask import DaskTaskRunner

    from flows.runners import configured_task_runner
    from flows.validate import validate_flow

    monkeypatch.setenv("OPSFABRIC_ORCHESTRATION__TASK_RUNNER", "dask")
    monkeypatch.setenv("OPSFABRIC_ORCHESTRATION__DASK_N_WORKERS", "2")
    runner = configured_task_runner()
    assert isinstance(runner, DaskTaskRunner)
    reports = validate_flow.with_options(task_runner=runner)(ml_overlay())
    assert [r["passed"] for r in reports] == [True] * 5
    assert {r["source"].rsplit("/", 1)[-1] for r in reports} == {
        "reference.parquet", "batch_01.parquet", "batch_02.parquet", "batch_03.parquet", "batch_04.parquet"
    }


@pytest.mark.unit
def test_threads_by_default(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.runners import configured_task_runner

    monkeypatch.delenv("OPSFABRIC_ORCHESTRATION__TASK_RUNNER", raising=False)
    assert isinstance(configured_task_runner(), ThreadPoolTaskRunner)
