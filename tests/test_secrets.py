"""A canary secret planted in the endpoint key is used, and found in no store: state files, MLflow, Prefect logs and artifacts.

(The scaled-out test plants a database password in the MLflow and Prefect server URIs and searches for it too.)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

pytestmark = pytest.mark.flows
CANARY = f"sk-canary{uuid.uuid4().hex}"


class OneSearchThenAnswer(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: one search_docs call, then a final answer."""

    auth: list[str] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        OneSearchThenAnswer.auth.append(self.headers.get("Authorization", ""))
        if any(m["role"] == "tool" for m in body["messages"]):
            message, finish = {"role": "assistant", "content": "The runbook says to roll back first."}, "stop"
        else:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "search_docs", "arguments": json.dumps({"query": "rollback"})}}]}
            finish = "tool_calls"
        data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                           "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _files_containing(root, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_canary_secret_appears_in_no_store(prefect_api, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.agent import agent_ask_flow

    server = ThreadingHTTPServer(("127.0.0.1", 0), OneSearchThenAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CANARY_API_KEY", CANARY)
    state = tmp_path / "state"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(state), "agents": {"model": {
        "kind": "openai", "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1", "model": "scripted",
        "api_key_env": "CANARY_API_KEY"}}}))
    try:
        state_run = agent_ask_flow("search the docs for the rollback procedure", backend="replay", config_files=[str(overlay)],
                                   return_state=True)
    finally:
        server.shutdown()
        server.server_close()
    result = state_run.result()
    assert result["status"] == "completed", result
    assert f"Bearer {CANARY}" in OneSearchThenAnswer.auth  # the key really was used

    needle = CANARY.encode()
    stored = sorted(p for p in state.rglob("*") if p.is_file())
    assert any(p.name == "mlflow.db" for p in stored) and any("traces" in p.parts for p in stored)  # searched where it would be
    assert _files_containing(state, b"search the docs for the rollback procedure")  # the search does read the stores
    assert _files_containing(state, needle) == []

    flow_run_id = state_run.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 60
        logs: list = []
        while not logs and time.monotonic() < deadline:  # logs reach the API in the background, after the run ended
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            time.sleep(0.5)
        artifacts = [a for a in client.read_artifacts() if a.flow_run_id == flow_run_id]
        flow_run = client.read_flow_run(flow_run_id)
    assert logs and artifacts
    assert all(CANARY not in log.message for log in logs)
    assert all(CANARY not in json.dumps(a.data, default=str) + (a.description or "") for a in artifacts)
    assert CANARY not in json.dumps(flow_run.parameters, default=str) + json.dumps(flow_run.state.data, default=str)
