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
    # what the UI's resume form submits: the typed ApprovalInput fields
    resume_flow_run(paused.id, run_input={"decision": "edit", "edited_args_json": json.dumps({"batch": "batch_04"})})
    worker.join(timeout=180)
    result = outcome["result"]
    assert result["status"] == "completed" and "retraining started on batch_04" in result["answer"]
    assert [json.loads(x)["batch"] for x in journal.read_text().splitlines()] == ["batch_04"]
    trace = json.loads(open(result["trace"]).read())
    assert [e["attributes"]["opsfabric.approval.decision"] for e in trace["events"] if e["kind"] == "approval"] == ["edit"]
