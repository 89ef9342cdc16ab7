"""Send an agent trace (``opsfabric.agents.trace``) to MLflow tracing, span by span.

The JSON trace is the record; this mirrors it into MLflow's trace store (works with the SQLite
store) so runs can be browsed in the MLflow UI. The trace is redacted before it is sent. Span
times are the trace's recorded offsets from the moment the trace is sent (the JSON trace is
rebuilt from checkpointed messages, which carry durations, not wall-clock times).
"""

from __future__ import annotations

import json
import time
from typing import Any

from opsfabric.agents.trace import redact

_SPAN_TYPES = {"tool_call": "TOOL", "model_call": "CHAT_MODEL", "guardrail": "UNKNOWN", "approval": "UNKNOWN", "node": "UNKNOWN"}


def _attrs(attributes: dict[str, Any]) -> dict[str, Any]:
    """MLflow span attributes: JSON-able scalars, nested values as JSON text."""
    return {k: (v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, sort_keys=True, default=str))
            for k, v in attributes.items()}


_LABEL_PREFIXES = ("gen_ai.request.", "opsfabric.model.", "opsfabric.server", "opsfabric.prompt.", "opsfabric.tool_calling", "opsfabric.tools.")


def model_tags(trace: dict[str, Any]) -> dict[str, str]:
    """The trace's model labels (model, GGUF file and sha256, server, temperature, seed, prompt) as searchable MLflow tags."""
    return {k: str(v) for k, v in trace["attributes"].items() if k.startswith(_LABEL_PREFIXES)}


def send_to_mlflow(trace: dict[str, Any], client: Any, experiment_id: str, *, run_id: str | None = None,
                   tags: dict[str, str] | None = None) -> str:
    """Record ``trace`` as one MLflow trace (root span ``invoke_agent`` plus one span per event); returns its id."""
    trace = redact(trace)
    base = time.time_ns()
    root = client.start_trace(
        name=f"invoke_agent {trace['attributes']['gen_ai.agent.name']}",
        span_type="AGENT",
        inputs={"request": trace["request"], "profile": trace["profile"]},
        attributes=_attrs({**trace["attributes"], "opsfabric.trace_id": trace["trace_id"]}),
        tags={"opsfabric.thread_id": trace["thread_id"], "opsfabric.status": trace["status"], **model_tags(trace), **(tags or {})},
        experiment_id=experiment_id,
        start_time_ns=base,
        run_id=run_id,
    )
    end = base
    previous_start = base
    for event in trace["events"]:
        # strictly increasing starts keep the trace's event order in MLflow (events can share a millisecond)
        start_ns = max(base + int(event["start_ms"] * 1e6), previous_start + 1000)
        previous_start = start_ns
        end_ns = start_ns + max(int(event["duration_ms"] * 1e6), 1000)
        end = max(end, end_ns)
        a = event["attributes"]
        inputs = a.get("gen_ai.tool.call.arguments") if event["kind"] == "tool_call" else None
        span = client.start_span(name=event["name"], trace_id=root.trace_id, parent_id=root.span_id,
                                 span_type=_SPAN_TYPES.get(event["kind"], "UNKNOWN"), inputs=inputs,
                                 attributes=_attrs(a), start_time_ns=start_ns)
        outputs = {"outcome": a.get("opsfabric.tool.outcome"), "digest": a.get("opsfabric.tool.result_digest")} if event["kind"] == "tool_call" else None
        client.end_span(trace_id=root.trace_id, span_id=span.span_id, outputs=outputs, end_time_ns=end_ns)
    client.end_trace(trace_id=root.trace_id, outputs={"answer": trace["answer"], "status": trace["status"],
                                                      "stop_reason": trace["stop_reason"]},
                     attributes=_attrs(trace["totals"]), end_time_ns=end + 1000)
    return root.trace_id
