"""Deployments from the git source, run by a real worker on a real server: train, drift event → retrain automation, watermark."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone

import pytest

pytestmark = pytest.mark.server


def _settings(ops_paths):
    from opsfabric.settings import load_settings

    return load_settings("configs/profiles/small.yaml", state_dir=ops_paths.state, project_root=ops_paths.root)


def _mlflow_runs(ops_paths, experiment_suffix: str):
    from mlflow import MlflowClient

    settings = _settings(ops_paths)
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(f"{settings.tracking.experiment_prefix}-{experiment_suffix}")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def trained(run_deployment_once):
    """One run of train-on-demand, started through the API as the UI's Run button does."""
    return run_deployment_once("train/train-on-demand")


def test_a_deployment_run_clones_the_source_and_finds_data_and_state(trained, ops_paths, source_repo, registered_deployments):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    assert trained.state.is_completed(), trained.state.message
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(trained.deployment_id)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[trained.id])))
    # registered from the git source: the worker clones it for the run
    [step] = deployment.pull_steps
    assert step["prefect.deployments.steps.git_clone"]["repository"] == source_repo.url
    assert deployment.job_variables["env"]["OPSFABRIC_STATE_DIR"] == str(ops_paths.state)
    # the run wrote its validation report as an artifact
    assert "validation-reference" in {a.key for a in artifacts}
    # data generated under the data root (not in the clone, not in the developer's checkout), small profile
    import pandas as pd

    assert len(pd.read_parquet(ops_paths.churn_dir / "reference.parquet")) == 1500
    # the MLflow store of the state folder holds the run and the first champion
    assert (ops_paths.state / "mlflow" / "mlflow.db").exists()
    [run] = _mlflow_runs(ops_paths, "ml-training")
    assert run.info.status == "FINISHED" and run.data.tags["prefect.flow_run_id"] == str(trained.id)


def _events(api_url: str, name: str, since: datetime) -> list[dict]:
    import httpx

    body = {"filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}}, "limit": 50}
    response = httpx.post(f"{api_url}/events/filter", json=body, timeout=10)
    response.raise_for_status()
    return response.json()["events"]


def test_a_drift_event_runs_the_retrain_automation_once(trained, run_and_wait, wait_final, run_logs, prefect_server, prefect_worker, ops_paths, registered_deployments):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    assert trained.state.is_completed()
    since = datetime.now(timezone.utc)
    monitor = run_and_wait("monitor/monitor-new-batches-daily", {"batch": "batch_02"})
    assert monitor.state.is_completed(), monitor.state.message

    # the monitor emitted the verdict as an event: dataset resource, MLflow run and data hash related
    events, deadline = [], time.monotonic() + 30
    while not events and time.monotonic() < deadline:  # events reach the API asynchronously
        events = _events(prefect_server.url, "opsfabric.drift.detected", since)
        time.sleep(0.5)
    assert len(events) == 1, run_logs(monitor.id)
    [event] = events
    assert event["resource"]["prefect.resource.id"] == "opsfabric.dataset.churn"
    assert event["resource"]["opsfabric.retrain-via"] == "event"
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event["related"]}
    [monitoring_run] = [r for r in _mlflow_runs(ops_paths, "ml-monitoring") if r.info.run_name == "monitor-batch_02"]
    assert related["mlflow-run"] == f"mlflow.run.{monitoring_run.info.run_id}"
    assert related["data"].startswith("opsfabric.data.md5.")
    assert event["payload"]["batch"] == "batch_02" and event["payload"]["drift_share"] > 0 and event["payload"]["reasons"]

    # the automation started the retrain deployment with the event's parameters; wait for it
    deadline = time.monotonic() + 120
    retrain_id = registered_deployments["retrain-on-drift"]
    runs = []
    with get_client(sync_client=True) as client:
        while not runs and time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[retrain_id])))
            time.sleep(1.0)
    assert len(runs) == 1, f"automation did not start exactly one retrain run: {runs}\n{prefect_worker.tail()}"
    retrain = wait_final(runs[0].id)
    assert retrain.state.is_completed(), retrain.state.message
    assert retrain.parameters["recent_batches"] == [str(ops_paths.churn_dir / "batch_02.parquet")]
    assert retrain.parameters["reason"] == event["payload"]["reason"]
    # retrained once: by the automation, not also inside the monitor's run
    training = _mlflow_runs(ops_paths, "ml-training")
    assert sorted(r.info.run_name for r in training) == ["retrain-batch_02", "train-reference"]


def test_a_dropped_batch_is_monitored_once_by_two_consecutive_runs(trained, run_and_wait, run_logs, ops_paths):
    assert trained.state.is_completed()
    incoming = ops_paths.churn_dir / "incoming"
    incoming.mkdir(exist_ok=True)
    shutil.copyfile(ops_paths.churn_dir / "batch_01.parquet", incoming / "batch_05.parquet")

    first = run_and_wait("monitor/monitor-new-batches-daily", {"retrain_on_drift": False})
    second = run_and_wait("monitor/monitor-new-batches-daily", {"retrain_on_drift": False})
    assert first.state.is_completed() and second.state.is_completed(), (first.state.message, second.state.message)

    first_logs, second_logs = run_logs(first.id, "new batch(es)"), run_logs(second.id, "new batch(es)")
    assert any("1 new batch(es)" in m and "batch_05.parquet" in m for m in first_logs), first_logs
    assert any("0 new batch(es)" in m for m in second_logs), second_logs
    watermark = json.loads((ops_paths.state / "watermarks" / "churn.json").read_text())
    assert set(watermark["monitored"]) == {"incoming/batch_05.parquet"} and watermark["claims"] == {}
    assert [r.info.run_name for r in _mlflow_runs(ops_paths, "ml-monitoring")].count("monitor-batch_05") == 1
