"""The agent as a Prefect flow: a pending approval pauses the flow run with a typed resume form."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

pytestmark = pytest.mark.flows


def _paused_run(flow_name: str, timeout: float = 120.0):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))))
            runs = [r for r in runs if r.name and client.read_flow(r.flow_id).name == flow_name]
            if runs:
                return runs[0]
            time.sleep(0.5)
    raise AssertionError("no paused agent-ask flow run")


def _paused_again(run, timeout: float = 60.0):
    """The same flow run, paused anew (a new pause state) after a refused answer."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            now = client.read_flow_run(run.id)
            if now.state and now.state.name == "Paused" and now.state.id != run.state.id:
                return now
            time.sleep(0.3)
    raise AssertionError(f"flow run {run.id} did not pause again after a refused answer")


def test_pending_approval_pauses_the_flow_and_the_form_resumes_the_thread(prefect_api, tmp_path):
    from prefect.flow_runs import resume_flow_run

    from flows.agent import agent_ask_flow

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    outcome: dict = {}

    def run():
        outcome["result"] = agent_ask_flow("retrain the model on batch 3", backend="replay", config_files=[str(overlay)],
                                           approval_timeout_seconds=120)

    worker = threading.Thread(target=run)
    worker.start()
    paused = _paused_run("agent-ask")
    journal = tmp_path / "state" / "agents" / "replay-journal.jsonl"
    assert not journal.exists()  # nothing ran before the decision
    # what the UI's resume form submits: the typed ApprovalInput fields. A malformed or refused answer
    # pauses the run again (the action is still pending) instead of failing it.
    for bad in ("{not json", json.dumps({"batch": "latest"})):
        resume_flow_run(paused.id, run_input={"decision": "edit", "edited_args_json": bad})
        paused = _paused_again(paused)
        assert not journal.exists()
    resume_flow_run(paused.id, run_input={"decision": "edit", "edited_args_json": json.dumps({"batch": "batch_04"})})
    worker.join(timeout=180)
    result = outcome["result"]
    assert result["status"] == "completed" and "retraining started on batch_04" in result["answer"]
    assert [json.loads(x)["batch"] for x in journal.read_text().splitlines()] == ["batch_04"]
    trace = json.loads(open(result["trace"]).read())
    assert [e["attributes"]["opsfabric.approval.decision"] for e in trace["events"] if e["kind"] == "approval"] == ["edit"]


def test_a_form_answered_after_the_action_was_answered_elsewhere_is_refused(prefect_api, tmp_path):
    from prefect.flow_runs import resume_flow_run

    from flows.agent import _agent, agent_ask_flow
    from flows.runners import flow_settings
    from opsfabric.agents.agent import pending_actions, resume_run
    from opsfabric.agents.errors import ThreadStateError

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    outcome: dict = {}

    def run():
        try:
            agent_ask_flow("retrain the model on batch_03 and then promote model version 4", backend="replay",
                           config_files=[str(overlay)], approval_timeout_seconds=120)
        except Exception as exc:  # noqa: BLE001 - the flow's error is what the test checks
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    paused = _paused_run("agent-ask")
    # meanwhile the retraining is approved from the command line; the thread now waits on the promotion
    agent, _ = _agent(flow_settings([str(overlay)]), "replay", None)

    thread = next(c.config["configurable"]["thread_id"] for c in agent.graph.checkpointer.list(None))
    first = pending_actions(agent, thread)
    assert [p.tool for p in first] == ["trigger_retraining"]
    assert [p.tool for p in resume_run(agent, thread, {"type": "approve"}, expected_interrupt_id=first[0].interrupt_id).pending] == ["promote_model_version"]
    # the form, filled in for the retraining, arrives late: it must not approve the promotion
    resume_flow_run(paused.id, run_input={"decision": "approve"})
    worker.join(timeout=180)
    assert isinstance(outcome.get("error"), ThreadStateError) and "already answered" in str(outcome["error"])
    journal = tmp_path / "state" / "agents" / "replay-journal.jsonl"
    assert [json.loads(x)["action"] for x in journal.read_text().splitlines()] == ["trigger_retraining"]
    assert [p.tool for p in pending_actions(agent, thread)] == ["promote_model_version"]


def test_the_flow_result_answer_is_redacted(prefect_api, tmp_path):
    from flows.agent import agent_ask_flow
    from opsfabric.agents.trace import find_secrets

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    result = agent_ask_flow("search the docs for rollback with token sk-proj-THISISNOTAREALKEY1234567890", backend="replay",
                            config_files=[str(overlay)])
    assert result["status"] == "completed" and "search_docs" in result["answer"]
    assert find_secrets(json.dumps(result)) == [], result["answer"]
