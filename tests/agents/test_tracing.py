"""Agent traces in MLflow tracing (real SQLite store in a tmp dir)."""

from __future__ import annotations

import json

import pytest

from opsfabric.agents.agent import build_agent, open_checkpointer, resume_run, start_run
from opsfabric.agents.replay import ReplayBackend
from opsfabric.agents.settings import AgentsSettings
from opsfabric.agents.tracing import send_to_mlflow

pytestmark = pytest.mark.flows


def test_trace_is_recorded_in_mlflow_span_by_span_without_secrets(make_settings, tmp_path):
    import mlflow

    from opsfabric.tracking import experiment_id, mlflow_client

    settings = make_settings()
    agent = build_agent(AgentsSettings(), ReplayBackend(), open_checkpointer(tmp_path / "cp.sqlite"))
    pending = start_run(agent, "check drift for batch 2 and retrain if needed")
    done = resume_run(agent, pending.thread_id, {"type": "approve"})
    client = mlflow_client(settings)
    exp = experiment_id(settings, "agent-runs")
    trace_id = send_to_mlflow(done.trace, client, exp)
    found = mlflow.search_traces(locations=[exp], flush=True, return_type="list")
    assert [t.info.trace_id for t in found] == [trace_id]
    spans = client.get_trace(trace_id).data.spans
    assert [s.name for s in spans] == [
        "invoke_agent opsfabric-ops", "chat offline-planner", "execute_tool latest_drift_verdict", "chat offline-planner",
        "approval trigger_retraining", "execute_tool trigger_retraining", "chat offline-planner"]
    tool = spans[2]
    assert tool.span_type == "TOOL" and tool.attributes["gen_ai.tool.name"] == "latest_drift_verdict"
    assert spans[1].attributes["gen_ai.usage.input_tokens"] == 0
    leaky = start_run(agent, "search the docs for postgres://ops:hunter2secret@db/x")
    leaky_id = send_to_mlflow(leaky.trace, client, exp)
    mlflow.search_traces(locations=[exp], flush=True)
    stored = client.get_trace(leaky_id)
    text = json.dumps([s.to_dict() for s in stored.data.spans], default=str) + json.dumps(stored.info.to_dict(), default=str)
    assert "hunter2secret" not in text and "[REDACTED]" in text
