"""PlatformBackend on a real MLflow SQLite registry in a tmp dir: registry tools, promotion discipline, drift.

The RAG tools: test_platform_rag.py; retraining: test_platform_retrain.py.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from opsfabric.agents.agent import build_agent, open_checkpointer, resume_run, start_run
from opsfabric.agents.backend import PlatformBackend
from opsfabric.agents.errors import BackendError
from opsfabric.agents.trace import trajectory
from opsfabric.errors import LockTimeoutError
from opsfabric.locking import exclusive
from opsfabric.ml.registry import DECISION_TAG, PROMOTED, PROMOTING, REJECTED, get_champion, registry_lock

pytestmark = pytest.mark.flows


@pytest.fixture
def registry(make_settings, tmp_path):
    """Versions 1 (promoted, champion) and 2 (rejected) as the gate registers them, each with its training run."""
    from opsfabric.tracking import experiment_id, mlflow_client

    settings = make_settings()
    client = mlflow_client(settings)
    exp = experiment_id(settings, "agent-test")
    name, alias = settings.ml.registered_model, settings.ml.champion_alias
    client.create_registered_model(name)
    for auc, decision in ((0.76, PROMOTED), (0.79, REJECTED)):
        add_version(client, exp, name, tmp_path, auc, gate_tags(decision, auc))
    client.set_registered_model_alias(name, alias, "1")
    return settings, client, exp


def gate_tags(decision, auc):
    """The tags ``opsfabric.ml.promotion.version_tags`` writes that the registry's reconcile reads."""
    return {DECISION_TAG: decision, "gate.metric": "roc_auc", "gate.candidate_score": f"{auc:.6f}", "gate.champion_score": "none",
            "gate.previous_champion": "none", "gate.reasons": "test"}


def add_version(client, exp, name, tmp_path, auc, tags, *, with_run=True):
    run_id = None
    if with_run:
        run_id = client.create_run(exp).info.run_id
        client.log_metric(run_id, "roc_auc", auc)
        client.set_terminated(run_id)
    return client.create_model_version(name, f"{tmp_path}/model-{auc}", run_id=run_id, tags=tags).version


def champion(settings, client):
    return get_champion(client, settings.ml.registered_model, settings.ml.champion_alias).version


def test_registry_tools_read_and_promote_through_the_agent(registry, tmp_path):
    settings, client, _ = registry
    backend = PlatformBackend(settings)
    info = backend.champion_info()
    assert (info["champion_version"], info["versions"], info["scores"]["roc_auc"]) == (1, [1, 2], 0.76)
    assert backend.compare_model_versions(1, 2)["delta_b_minus_a"] == {"roc_auc": 0.03}

    agent = build_agent(settings.agents, backend, open_checkpointer(tmp_path / "cp.sqlite"))
    pending = start_run(agent, "promote model version 2 because it scored better on batch 3")
    assert pending.status == "awaiting_approval"
    assert champion(settings, client) == "1"
    done = resume_run(agent, pending.thread_id, {"type": "approve"})
    assert done.status == "completed" and "champion moved from version 1 to 2" in done.answer
    assert champion(settings, client) == "2"
    tags = client.get_model_version(settings.ml.registered_model, "2").tags
    assert tags["manual.promoted_by"].startswith("ops-agent, approved by ")
    assert tags["manual.previous_champion"] == "1" and "scored better" in tags["manual.reason"]
    assert tags[DECISION_TAG] == REJECTED  # the gate's own record is left as the gate wrote it


def test_promotion_refuses_unknown_and_ungated_versions_and_the_run_survives(registry, tmp_path):
    settings, client, exp = registry
    name = settings.ml.registered_model
    # version 3: registered by hand, never trained by a flow nor judged by the gate
    add_version(client, exp, name, tmp_path, 0.9, {}, with_run=False)
    backend = PlatformBackend(settings)
    with pytest.raises(BackendError, match=r"has no version 7 \(versions: 1, 2, 3\)"):
        backend.promote_model_version(7, "typo")
    with pytest.raises(BackendError, match=r"version 3 was not registered by the promotion gate \(gate.decision=None, run none\)"):
        backend.promote_model_version(3, "looks good")
    with pytest.raises(BackendError, match="has no version 9"):
        backend.compare_model_versions(1, 9)  # an MLflow 'not found' used to escape as MlflowException
    assert champion(settings, client) == "1"

    # through the agent: the refusal is a recorded tool error, not a crashed run
    agent = build_agent(settings.agents, backend, open_checkpointer(tmp_path / "cp.sqlite"))
    pending = start_run(agent, "promote model version 3")
    done = resume_run(agent, pending.thread_id, {"type": "approve"})
    calls = trajectory(done.trace) if done.trace else []
    if done.status == "awaiting_approval":  # the planner retries a failed call: that needs a new approval
        done = resume_run(agent, pending.thread_id, {"type": "reject", "message": "stop retrying"})
        calls = trajectory(done.trace)
    assert calls[0].name == "promote_model_version" and calls[0].outcome == "error"
    assert champion(settings, client) == "1"


def test_promotion_holds_the_registry_lock_and_rereads_the_champion_under_it(registry):
    settings, client, _ = registry
    name, alias = settings.ml.registered_model, settings.ml.champion_alias
    backend = PlatformBackend(settings)
    taken, release = threading.Event(), threading.Event()

    def gate_promoting_meanwhile():
        with exclusive(settings, registry_lock(name), purpose="test: a gate promotes version 2"):
            taken.set()
            client.set_registered_model_alias(name, alias, "2")
            release.wait(10)

    holder = threading.Thread(target=gate_promoting_meanwhile)
    holder.start()
    assert taken.wait(10)
    threading.Timer(1.0, release.set).start()
    started = time.monotonic()
    result = backend.promote_model_version(1, "back to version 1")
    holder.join()
    assert time.monotonic() - started >= 0.9  # it waited for the gate's lock
    # the champion it replaced is the one the gate left, read under the lock (not version 1 from before)
    assert (result["previous"], result["champion_version"]) == (2, 1) and champion(settings, client) == "1"
    assert client.get_model_version(name, "1").tags["manual.previous_champion"] == "2"

    # a holder that never lets go: a named timeout that names the lock, and nothing moves
    short = settings.model_copy(update={"orchestration": settings.orchestration.model_copy(
        update={"lock": settings.orchestration.lock.model_copy(update={"timeout_seconds": 0.5})})})
    release.clear()
    holder = threading.Thread(target=gate_promoting_meanwhile)
    taken.clear()
    holder.start()
    assert taken.wait(10)
    try:
        with pytest.raises(LockTimeoutError, match=f"lock 'ml-registry-{name}'"):
            PlatformBackend(short).promote_model_version(1, "while a gate holds the lock")
    finally:
        release.set()
        holder.join()
    assert champion(settings, client) == "2"  # what the holder set; the refused promotion wrote nothing


def test_promotion_repairs_a_killed_gate_first(registry, tmp_path):
    settings, client, exp = registry
    name, alias = settings.ml.registered_model, settings.ml.champion_alias
    # a gate died after moving the alias to version 3 and before confirming it
    add_version(client, exp, name, tmp_path, 0.81, gate_tags(PROMOTING, 0.81))
    client.set_registered_model_alias(name, alias, "3")
    backend = PlatformBackend(settings)
    with pytest.raises(BackendError):
        backend.promote_model_version(4, "no such version")
    assert client.get_model_version(name, "3").tags[DECISION_TAG] == PROMOTED  # repaired under the lock even so
    result = backend.promote_model_version(1, "roll the champion back")
    assert result["previous"] == 3 and champion(settings, client) == "1"
    # a later gate's reconcile finds nothing to misread
    from opsfabric.ml.promotion import reconcile_registry

    assert reconcile_registry(client, name, alias) == []
    again = backend.promote_model_version(1, "twice")
    assert again["changed"] is False and "already is champion" in again["summary"]


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
