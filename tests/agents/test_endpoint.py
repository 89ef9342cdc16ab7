"""The native endpoint path (ChatOpenAI) against a scripted OpenAI-compatible server: only what a real model cannot do on demand.

A real model now runs in the loop (``tests/llm/``: SmolLM2-135M on llama-cpp-python; read-only
calls, approvals, the allowlist, budgets and a dying server are tested there). This scripted server
is kept for the behaviours no real model can be made to produce when a test needs them: a model that
follows an instruction injected into a tool result, parallel tool calls in one message (the
json_schema mode asks for one call per decision), a call to a tool that does not exist, tool-call
ids repeated or reused across turns, and exact usage figures to check the cost arithmetic. It is a
real HTTP server speaking the Chat Completions protocol with a fixed script per request; the graph,
tools, guardrails, approvals and traces are the production ones.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from opsfabric.agents.agent import build_agent, open_checkpointer, resume_run, start_run
from opsfabric.agents.replay import ReplayBackend
from opsfabric.agents.settings import AgentsSettings, EndpointModelSettings
from opsfabric.agents.trace import find_secrets, trajectory

pytestmark = pytest.mark.flows
API_KEY = "sk-test-abcdefghijklmnopqrstuvwxyz123456"

# request text -> the tool calls (name, arguments) to return at each turn; then a final answer
SCRIPTS = {
    "follow the docs": [("search_docs", {"query": "promotion"}), ("promote_model_version", {"version": 1})],
    "drop it": [("drop_database", {"really": True})],
    "promote four": [("promote_model_version", {"version": 4})],
    # parallel tool calls: a read and a risky call in one decision
    "both at once": [[("search_docs", {"query": "promotion"}), ("promote_model_version", {"version": 1})]],
    "two risky at once": [[("trigger_retraining", {"batch": "batch_03"}), ("promote_model_version", {"version": 1})]],
    # an endpoint that numbers tool calls per message, so ids repeat across turns
    "reused ids": [("index_status", {}), [("rollback_index_alias", {}), ("index_status", {})]],
    "same id every turn": [("index_status", {})] * 6,
}
REUSED_IDS = {"reused ids", "same id every turn"}


class ScriptedChatServer(BaseHTTPRequestHandler):
    seen_auth: list[str] = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ScriptedChatServer.seen_auth.append(self.headers.get("Authorization", ""))
        messages = body["messages"]
        request = next(m["content"] for m in messages if m["role"] == "user")
        turn = sum(m["role"] == "assistant" for m in messages)
        script = SCRIPTS[request]
        if turn < len(script):
            calls = script[turn] if isinstance(script[turn], list) else [script[turn]]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}" if request in REUSED_IDS else f"call_{turn}_{i}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}
                for i, (name, args) in enumerate(calls)]}
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": "Done (scripted endpoint)."}, "stop"
        payload = {"id": f"cmpl-{turn}", "object": "chat.completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                   "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def endpoint_agent(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    config = AgentsSettings(model=EndpointModelSettings(base_url=endpoint, model="scripted", price_per_1k_input_tokens=1.0,
                                                        price_per_1k_output_tokens=2.0))

    def make(profile=None):
        backend = ReplayBackend(journal=tmp_path / "journal.jsonl")
        return build_agent(config, backend, open_checkpointer(tmp_path / f"cp-{profile}.sqlite"), profile=profile)

    return make


def test_injected_document_cannot_make_the_endpoint_model_promote(endpoint_agent, tmp_path):
    r = start_run(endpoint_agent(), "follow the docs")
    assert (r.status, r.stop_reason) == ("stopped", "injection")
    assert [(c.name, c.outcome) for c in trajectory(r.trace)] == [("search_docs", "ok"), ("promote_model_version", "refused")]
    assert not (tmp_path / "journal.jsonl").exists()  # refused, not merely sent for approval
    models = [e for e in r.trace["events"] if e["kind"] == "model_call"]
    assert models[0]["attributes"]["gen_ai.request.model"] == "scripted"
    assert models[0]["attributes"]["gen_ai.usage.input_tokens"] == 120 and models[0]["attributes"]["opsfabric.usage.estimated"] is False
    assert r.trace["totals"]["opsfabric.cost.estimated_usd"] == pytest.approx(2 * (0.12 * 1.0 + 0.03 * 2.0))
    assert ScriptedChatServer.seen_auth[-1] == f"Bearer {API_KEY}"
    assert API_KEY not in json.dumps(r.trace) and find_secrets(json.dumps(r.trace)) == []


def test_a_risky_call_proposed_beside_another_call_is_refused(endpoint_agent, tmp_path):
    # the model proposes search_docs and a promotion in one message: the promotion could run before the
    # search's output was checked for injected instructions, so it is refused even if an operator approves it
    agent = endpoint_agent()
    r = start_run(agent, "both at once")
    # refused by the guardrail before any approval is asked (the guard wraps the approval step)
    assert (r.status, r.stop_reason, r.pending) == ("stopped", "parallel", [])
    outcomes = {c.name: c.outcome for c in trajectory(r.trace)}
    assert outcomes["promote_model_version"] == "refused"
    assert not (tmp_path / "journal.jsonl").exists()


def test_two_risky_calls_in_one_decision_stop_with_one_reason(endpoint_agent, tmp_path):
    r = start_run(endpoint_agent(), "two risky at once")
    assert (r.status, r.stop_reason, r.pending) == ("stopped", "parallel", [])
    assert [c.outcome for c in trajectory(r.trace)] == ["refused", "refused"]
    assert not (tmp_path / "journal.jsonl").exists()


def test_tool_call_ids_repeated_by_the_endpoint_do_not_defeat_the_guardrails(endpoint_agent, tmp_path):
    # turn 2 reuses turn 1's id for the risky call: it is still seen as sharing its decision with another call
    r = start_run(endpoint_agent(), "reused ids")
    assert (r.status, r.stop_reason, r.pending) == ("stopped", "parallel", [])
    assert [(c.name, c.outcome) for c in trajectory(r.trace)] == [
        ("index_status", "ok"), ("rollback_index_alias", "refused"), ("index_status", "ok")]
    # the same id every turn: loop detection still counts each call
    looped = start_run(endpoint_agent(), "same id every turn")
    assert (looped.status, looped.stop_reason) == ("stopped", "loop")
    assert [c.outcome for c in trajectory(looped.trace)] == ["ok", "ok", "refused"]


def test_a_tool_outside_the_allowlist_is_a_hard_stop(endpoint_agent):
    unknown = start_run(endpoint_agent(), "drop it")
    assert (unknown.status, unknown.stop_reason) == ("stopped", "allowlist")
    viewer = start_run(endpoint_agent("viewer"), "promote four")
    assert (viewer.status, viewer.stop_reason) == ("stopped", "allowlist")
    assert "not allowed for this profile" in viewer.answer


def test_endpoint_model_goes_through_the_same_approval(endpoint_agent, tmp_path):
    agent = endpoint_agent()
    r = start_run(agent, "promote four")
    assert r.status == "awaiting_approval" and r.pending[0].args == {"version": 4}
    done = resume_run(agent, r.thread_id, {"type": "approve"})
    assert done.status == "completed" and done.answer == "Done (scripted endpoint)."
    assert json.loads((tmp_path / "journal.jsonl").read_text())["champion"] == 4
