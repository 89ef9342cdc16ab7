"""One structured trace per agent run: JSON with OpenTelemetry GenAI attribute names.

Shape (``TRACE_FORMAT``)::

    {"format": "opsfabric.agent-trace/1", "trace_id", "thread_id", "request", "profile",
     "attributes": {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name", "gen_ai.request.model", ...},
     "events": [{"seq", "kind", "name", "start_ms", "duration_ms", "attributes": {...}}, ...],
     "answer", "status", "stop_reason", "totals": {...},
     "nodes": [{"step", "node", "started_at", "duration_ms"}, ...]}

Event kinds: ``node`` (a graph node ran), ``model_call`` (``gen_ai.operation.name=chat``, token
usage under ``gen_ai.usage.input_tokens``/``output_tokens`` plus ``opsfabric.usage.estimated``
saying whether they are estimates), ``tool_call`` (``execute_tool``: ``gen_ai.tool.name``,
``gen_ai.tool.call.id``, ``gen_ai.tool.call.arguments``, ``opsfabric.tool.result_digest``,
``opsfabric.tool.outcome``, ``error.type``), ``guardrail`` and ``approval`` decisions. ``nodes``
lists the graph nodes in the order they ran (from the checkpoint history).

Every trace passes through :func:`redact` before it is written or sent anywhere, and
:func:`write_trace` refuses to write a text in which :func:`find_secrets` still finds something.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsfabric.agents.errors import AgentError

TRACE_FORMAT = "opsfabric.agent-trace/1"
REDACTED = "[REDACTED]"

# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------
_SECRET_PATTERNS: dict[str, re.Pattern[str]] = {
    "openai_key": re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}"),
    "github_token": re.compile(r"\b(?:ghp|gho|ghs|ghu|github_pat)_[A-Za-z0-9_]{20,}"),
    "aws_access_key": re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    "slack_token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "jwt": re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    "bearer": re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{12,}"),
    "uri_password": re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]+:)([^\s@/]+)(@)"),
    "assignment": re.compile(
        r"(?i)\b((?:api[_-]?key|access[_-]?key|secret|token|password|passwd|pwd|auth)[A-Za-z0-9_]*\s*[=:]\s*[\"']?)([^\s\"',;&]{4,})"
    ),
}
_SECRET_KEY_NAMES = re.compile(r"(?i)(api[_-]?key|secret|token|password|passwd|authorization|credential)")
# Key names that look secret-ish but hold counts, not secrets.
_SAFE_KEY_NAMES = re.compile(r"(?i)(tokens?$|_tokens|token_count|usage)")
_SECRET_ENV = re.compile(r"(?i)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)")


def _env_secrets() -> list[str]:
    """Values of environment variables whose names say they are secrets (longest first)."""
    values = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, extra_secrets: list[str] | None = None) -> str:
    """``text`` with known secret shapes and secret environment values replaced by ``[REDACTED]``."""
    for secret in [*(extra_secrets or []), *_env_secrets()]:
        if secret:
            text = text.replace(secret, REDACTED)
    for name, pattern in _SECRET_PATTERNS.items():
        if name in ("uri_password", "assignment"):
            text = pattern.sub(lambda m: m.group(1) + REDACTED + (m.group(3) if name == "uri_password" else ""), text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def redact(value: Any, extra_secrets: list[str] | None = None) -> Any:
    """A deep copy of ``value`` with every string redacted and secret-named keys' values blanked."""
    if isinstance(value, str):
        return redact_text(value, extra_secrets)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            key_text = str(key)
            if _SECRET_KEY_NAMES.search(key_text) and not _SAFE_KEY_NAMES.search(key_text) and isinstance(item, str) and item:
                out[key_text] = REDACTED
            else:
                out[key_text] = redact(item, extra_secrets)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v, extra_secrets) for v in value]
    return value


def find_secrets(text: str, extra_secrets: list[str] | None = None) -> list[str]:
    """Names of the secret shapes (or ``env``) still present in ``text``: empty means clean."""
    found = [name for name, p in _SECRET_PATTERNS.items() if _still_secret(name, p, text)]
    if any(s and s in text for s in [*(extra_secrets or []), *_env_secrets()]):
        found.append("env")
    return found


def _still_secret(name: str, pattern: re.Pattern[str], text: str) -> bool:
    for match in pattern.finditer(text):
        if name == "uri_password" and match.group(2) == REDACTED:
            continue
        if name == "assignment" and match.group(2).startswith(REDACTED):
            continue
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------
def digest(value: Any) -> str:
    """Short stable digest of a tool result (the trace keeps the digest and a short preview)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TraceRecorder:
    """Collects the events of one run; :meth:`finish` returns the redacted trace dict.

    Times are milliseconds since the recorder started (``clock`` is injectable so tests and the
    regression suite can use a deterministic one).
    """

    request: str
    profile: str
    thread_id: str
    model_name: str
    agent_name: str = "opsfabric-ops"
    labels: dict[str, Any] = field(default_factory=dict)  # model file and digest, server, temperature, seed, prompt
    clock: Any = time.perf_counter
    trace_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    events: list[dict[str, Any]] = field(default_factory=list)
    _t0: float = 0.0

    def __post_init__(self) -> None:
        self._t0 = self.clock()

    def now_ms(self) -> float:
        return round((self.clock() - self._t0) * 1000, 3)

    def _next_start(self) -> float:
        """Events without their own time start where the previous one ended (traces rebuilt after the fact)."""
        if not self.events:
            return 0.0
        last = self.events[-1]
        return round(last["start_ms"] + last["duration_ms"], 3)

    def add(self, kind: str, name: str, attributes: dict[str, Any], *, start_ms: float | None = None, duration_ms: float = 0.0) -> dict[str, Any]:
        event = {
            "seq": len(self.events),
            "kind": kind,
            "name": name,
            "start_ms": self._next_start() if start_ms is None else start_ms,
            "duration_ms": round(duration_ms, 3),
            "attributes": attributes,
        }
        self.events.append(event)
        return event

    def tool_call(self, name: str, call_id: str, args: dict[str, Any], *, outcome: str, result: Any = None,
                  error: str | None = None, start_ms: float | None = None, duration_ms: float = 0.0) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.call.arguments": args,
            "opsfabric.tool.outcome": outcome,
        }
        if result is not None:
            attrs["opsfabric.tool.result_digest"] = digest(result)
            attrs["opsfabric.tool.result_preview"] = (result if isinstance(result, str) else json.dumps(result, default=str))[:200]
        if error:
            attrs["error.type"] = error
        return self.add("tool_call", f"execute_tool {name}", attrs, start_ms=start_ms, duration_ms=duration_ms)

    def model_call(self, model: str, *, input_tokens: int, output_tokens: int, estimated: bool, cost: float,
                   tool_calls: list[str], start_ms: float | None = None, duration_ms: float = 0.0, **extra: Any) -> dict[str, Any]:
        return self.add(
            "model_call",
            f"chat {model}",
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "opsfabric.usage.estimated": estimated,
                "opsfabric.cost.estimated_usd": round(cost, 6),
                "opsfabric.model.tool_calls": tool_calls,
                **extra,
            },
            start_ms=start_ms,
            duration_ms=duration_ms,
        )

    def guardrail(self, rule: str, decision: str, detail: str, **extra: Any) -> dict[str, Any]:
        return self.add("guardrail", f"guardrail {rule}", {"opsfabric.guardrail.rule": rule, "opsfabric.guardrail.decision": decision, "opsfabric.guardrail.detail": detail, **extra})

    def approval(self, tool: str, decision: str, *, reason: str | None = None, edited_args: dict | None = None) -> dict[str, Any]:
        attrs: dict[str, Any] = {"gen_ai.tool.name": tool, "opsfabric.approval.decision": decision}
        if reason:
            attrs["opsfabric.approval.reason"] = reason
        if edited_args is not None:
            attrs["opsfabric.approval.edited_arguments"] = edited_args
        return self.add("approval", f"approval {tool}", attrs)

    def finish(self, *, answer: str, status: str, stop_reason: str | None, extra_secrets: list[str] | None = None) -> dict[str, Any]:
        models = [e for e in self.events if e["kind"] == "model_call"]
        tools = [e for e in self.events if e["kind"] == "tool_call"]
        totals = {
            "gen_ai.usage.input_tokens": sum(e["attributes"]["gen_ai.usage.input_tokens"] for e in models),
            "gen_ai.usage.output_tokens": sum(e["attributes"]["gen_ai.usage.output_tokens"] for e in models),
            "opsfabric.usage.estimated": any(e["attributes"]["opsfabric.usage.estimated"] for e in models),
            "opsfabric.cost.estimated_usd": round(sum(e["attributes"]["opsfabric.cost.estimated_usd"] for e in models), 6),
            "model_calls": len(models),
            "tool_calls": len(tools),
            "model_ms": round(sum(e["duration_ms"] for e in models), 3),
            "tool_ms": round(sum(e["duration_ms"] for e in tools), 3),
            "wall_ms": self.now_ms(),
        }
        trace = {
            "format": TRACE_FORMAT,
            "trace_id": self.trace_id,
            "thread_id": self.thread_id,
            "request": self.request,
            "profile": self.profile,
            "attributes": {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": self.agent_name,
                "gen_ai.request.model": self.model_name,
                "gen_ai.conversation.id": self.thread_id,
                **{k: v for k, v in self.labels.items() if k != "gen_ai.request.model"},
            },
            "events": self.events,
            "answer": answer,
            "status": status,
            "stop_reason": stop_reason,
            "totals": totals,
        }
        return redact(trace, extra_secrets)


def trajectory(trace: dict[str, Any]):
    """The tool calls of a trace, in order, as :class:`opsfabric.agents.matching.ToolCall`."""
    from opsfabric.agents.matching import ToolCall

    return [
        ToolCall(e["attributes"]["gen_ai.tool.name"], dict(e["attributes"]["gen_ai.tool.call.arguments"]), e["attributes"]["opsfabric.tool.outcome"])
        for e in trace["events"]
        if e["kind"] == "tool_call"
    ]


def dumps_trace(trace: dict[str, Any], extra_secrets: list[str] | None = None) -> str:
    """The trace as JSON text, redacted, checked: raises if a secret shape survived."""
    text = json.dumps(redact(trace, extra_secrets), indent=2, sort_keys=False, default=str)
    left = find_secrets(text, extra_secrets)
    if left:
        raise AgentError(f"trace {trace.get('trace_id')} still contains secret-like text ({', '.join(left)}); not written",
                         hint="add the shape to opsfabric.agents.trace._SECRET_PATTERNS")
    return text


def write_trace(trace: dict[str, Any], folder: Path, extra_secrets: list[str] | None = None) -> Path:
    """Write ``<folder>/<trace_id>.json`` (redacted) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{trace['trace_id']}.json"
    path.write_text(dumps_trace(trace, extra_secrets))
    return path


# ---------------------------------------------------------------------------------------------
# Markdown timeline
# ---------------------------------------------------------------------------------------------
def _cell(text: Any, limit: int = 90) -> str:
    s = text if isinstance(text, str) else json.dumps(text, sort_keys=True, default=str)
    s = s.replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def render_timeline(trace: dict[str, Any]) -> str:
    """A readable markdown timeline of one trace (for a Prefect markdown artifact or a terminal)."""
    t = trace["totals"]
    est = " (estimated)" if t["opsfabric.usage.estimated"] else ""
    lines = [
        f"### Agent run `{trace['trace_id'][:12]}` (thread `{trace['thread_id']}`)",
        "",
        f"**Request:** {_cell(trace['request'], 300)}  ",
        f"**Profile:** `{trace['profile']}` · **Model:** `{trace['attributes']['gen_ai.request.model']}` · "
        f"**Status:** `{trace['status']}`" + (f" · **Stop reason:** `{trace['stop_reason']}`" if trace["stop_reason"] else ""),
        "",
        "| # | t (ms) | kind | what | detail | ms |",
        "|---|---:|---|---|---|---:|",
    ]
    for e in trace["events"]:
        a = e["attributes"]
        if e["kind"] == "tool_call":
            what = f"`{a['gen_ai.tool.name']}`"
            detail = f"{_cell(a['gen_ai.tool.call.arguments'], 60)} → {a['opsfabric.tool.outcome']}" + (f" ({a['error.type']})" if a.get("error.type") else "")
        elif e["kind"] == "model_call":
            what = "model"
            calls = ", ".join(a["opsfabric.model.tool_calls"]) or "answer"
            detail = f"{calls}; tokens {a['gen_ai.usage.input_tokens']}/{a['gen_ai.usage.output_tokens']}" + (" est." if a["opsfabric.usage.estimated"] else "")
        elif e["kind"] == "guardrail":
            what = f"guardrail `{a['opsfabric.guardrail.rule']}`"
            detail = f"{a['opsfabric.guardrail.decision']}: {_cell(a['opsfabric.guardrail.detail'], 70)}"
        elif e["kind"] == "approval":
            what = f"approval `{a['gen_ai.tool.name']}`"
            detail = a["opsfabric.approval.decision"] + (f": {_cell(a['opsfabric.approval.reason'], 60)}" if a.get("opsfabric.approval.reason") else "")
        else:
            what, detail = e["name"], _cell(a, 70)
        lines.append(f"| {e['seq']} | {e['start_ms']:.0f} | {e['kind']} | {what} | {detail} | {e['duration_ms']:.1f} |")
    if trace.get("nodes"):
        lines += ["", "Graph nodes: " + " → ".join(f"`{n['node']}`" for n in trace["nodes"])]
    lines += [
        "",
        f"**Answer:** {_cell(trace['answer'], 600)}",
        "",
        f"Totals: {t['model_calls']} model calls, {t['tool_calls']} tool calls, tokens "
        f"{t['gen_ai.usage.input_tokens']}/{t['gen_ai.usage.output_tokens']}{est}, cost ${t['opsfabric.cost.estimated_usd']:.4f}{est}, "
        f"wall {t['wall_ms']:.0f} ms (model {t['model_ms']:.0f}, tools {t['tool_ms']:.0f}).",
    ]
    return "\n".join(lines)
