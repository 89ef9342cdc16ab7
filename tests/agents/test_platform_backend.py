"""PlatformBackend on a real MLflow SQLite registry in a tmp dir (registry and drift tools; RAG tools need a built index)."""

from __future__ import annotations

import json

import pytest

from opsfabric.agents.agent import build_agent, open_checkpointer, resume_run, start_run
from opsfabric.agents.backend import PlatformBackend
from opsfabric.agents.errors import BackendError

pytestmark = pytest.mark.flows


@pytest.fixture
def registry(make_settings, tmp_path):
    from opsfabric.tracking import experiment_id, mlflow_client

    settings = make_settings()
    client = mlflow_client(settings)
    exp = experiment_id(settings, "agent-test")
    name, alias = settings.ml.registered_model, settings.ml.champion_alias
    client.create_registered_model(name)
    for auc in (0.76, 0.79):
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "roc_auc", auc)
        client.set_terminated(run.info.run_id)
        client.create_model_version(name, f"{tmp_path}/model-{auc}", run_id=run.info.run_id)
    client.set_registered_model_alias(name, alias, "1")
    return settings, client


def test_registry_tools_read_and_promote_through_the_agent(registry, tmp_path):
    settings, client = registry
    backend = PlatformBackend(settings)
    info = backend.champion_info()
    assert (info["champion_version"], info["versions"], info["scores"]["roc_auc"]) == (1, [1, 2], 0.76)
    assert backend.compare_model_versions(1, 2)["delta_b_minus_a"] == {"roc_auc": 0.03}

    agent = build_agent(settings.agents, backend, open_checkpointer(tmp_path / "cp.sqlite"))
    pending = start_run(agent, "promote model version 2")
    assert pending.status == "awaiting_approval"
    assert str(client.get_model_version_by_alias(settings.ml.registered_model, settings.ml.champion_alias).version) == "1"
    done = resume_run(agent, pending.thread_id, {"type": "approve"})
    assert done.status == "completed" and "champion moved to version 2" in done.answer
    assert str(client.get_model_version_by_alias(settings.ml.registered_model, settings.ml.champion_alias).version) == "2"


def test_drift_tool_reads_the_monitor_flow_verdicts(make_settings):
    settings = make_settings()
    backend = PlatformBackend(settings)
    with pytest.raises(BackendError, match="no drift verdict"):
        backend.latest_drift_verdict("batch_02")
    run = settings.state_dir / "runs" / "monitor" / "20260101T000000-abc"
    run.mkdir(parents=True)
    (run / "batch_02.json").write_text(json.dumps({"decision": {"approved": True, "reasons": ["drift share 0.4 >= 0.3"]}}))
    verdict = backend.latest_drift_verdict()
    assert (verdict["batch"], verdict["should_retrain"]) == ("batch_02", True) and "drift share 0.4" in verdict["summary"]
