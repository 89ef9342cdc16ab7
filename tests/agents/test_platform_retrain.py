"""trigger_retraining on the live platform: a real ``python -m flows.retrain`` child process, real MLflow
SQLite registry with a champion trained on the small churn data, real Prefect API (the test harness)."""

from __future__ import annotations

import pytest

from opsfabric.agents.agent import build_agent, open_checkpointer, resume_run, start_run
from opsfabric.agents.backend import PlatformBackend
from opsfabric.agents.errors import BackendError
from opsfabric.agents.trace import trajectory
from opsfabric.ml.registry import get_champion, model_versions
from opsfabric.settings import load_settings
from opsfabric.tracking import mlflow_client

pytestmark = pytest.mark.flows


def list_versions(client, name):
    return [v.version for v in model_versions(client, name)]


@pytest.fixture
def child_uses_the_harness(prefect_api, monkeypatch):
    """The child process reaches the test's Prefect API (the harness sets it for this process only)."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())


def retrain_runs() -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])))


def test_approved_retraining_runs_the_retrain_flow_on_the_agents_configuration(child_uses_the_harness, ml_overlay, churn_dir, tmp_path,
                                                                              monkeypatch):
    from flows.train import train_flow
    from opsfabric.ml.lineage import config_hash, file_md5

    config_files = ml_overlay()
    train_flow(config_files)  # the champion, version 1
    # the agent's configuration comes from its caller; the environment says otherwise and must not reach the child
    monkeypatch.setenv("OPSFABRIC_STATE_DIR", str(tmp_path / "elsewhere"))
    settings = load_settings(*config_files, state_dir=tmp_path / "state", agents={"retrain_wait_seconds": 300})
    client = mlflow_client(settings)
    name = settings.ml.registered_model
    assert list_versions(client, name) == ["1"]
    completed_before = sum(r.state.is_completed() for r in retrain_runs())

    agent = build_agent(settings.agents, PlatformBackend(settings), open_checkpointer(tmp_path / "cp.sqlite"))
    pending = start_run(agent, "retrain the model on batch 3")
    assert [(p.tool, p.args["batch"]) for p in pending.pending] == [("trigger_retraining", "batch_03")]
    assert not (settings.state_dir / "agents" / "retrain").exists()  # nothing started before the approval
    done = resume_run(agent, pending.thread_id, {"type": "approve"})

    assert [(c.name, c.outcome) for c in trajectory(done.trace)] == [("trigger_retraining", "ok")], done.answer
    assert done.status == "completed" and "retraining on batch_03 finished: version 2" in done.answer
    # the child trained on the agent's data into the agent's registry, as a Prefect flow run
    assert list_versions(client, name) == ["1", "2"]
    version = client.get_model_version(name, "2")
    run = client.get_run(version.run_id)
    assert run.data.tags["opsfabric.trigger"] == "drift" and run.info.run_name.startswith("retrain-batch_03")
    # ... with the agent's dataset and ML parameters, not the repository's defaults
    assert version.tags["opsfabric.config_hash"] == config_hash(settings)
    assert version.tags["dvc.md5.batch_03"] == file_md5(churn_dir / "batch_03.parquet")
    assert sum(r.state.is_completed() for r in retrain_runs()) == completed_before + 1
    assert not (tmp_path / "elsewhere" / "mlflow").exists()
    # the configuration it ran with is kept beside its log
    overlay = next((settings.state_dir / "agents" / "retrain").glob("*-batch_03.config.yaml"))
    monkeypatch.delenv("OPSFABRIC_STATE_DIR")
    assert load_settings(overlay).model_dump() == settings.model_dump()
    assert get_champion(client, name, settings.ml.champion_alias) is not None


def test_a_failed_retraining_is_a_named_error_and_an_unknown_batch_starts_nothing(child_uses_the_harness, ml_overlay, copy_churn):
    data = copy_churn()
    (data / "batch_04.parquet").write_bytes(b"\x00\x01garbage" * 10)
    settings = load_settings(*ml_overlay(data_dir=data), agents={"retrain_wait_seconds": 300})
    backend = PlatformBackend(settings)
    with pytest.raises(BackendError, match=r"cannot retrain on batch_09: dataset 'churn' has no such batch \(batches: batch_01, batch_02"):
        backend.trigger_retraining("batch_09", "typo")
    assert not (settings.state_dir / "agents" / "retrain").exists()
    with pytest.raises(BackendError, match=r"retraining on batch_04 failed \(exit status 2\): error: .*batch_04\.parquet.*cannot be read as parquet") as failed:
        backend.trigger_retraining("batch_04", "corrupt batch")
    assert failed.value.hint.startswith("full log: ") and failed.value.hint.endswith(".log")
