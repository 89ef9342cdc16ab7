"""Guardrails enforced outside the model, as LangChain agent middleware.

Enforcement points (in the order a tool call meets them):

1. ``GuardrailMiddleware.before_model`` (before every decision): stop flag set by an earlier
   breach, steps, tokens, estimated cost, wall time. A breach ends the run (``jump_to: end``) with
   an answer naming the reason, and the reason in state (``opsfabric_stop``).
2. ``GuardrailMiddleware.wrap_tool_call`` (before approval, before the tool): hard allowlist of
   the profile, pydantic argument validation (the message names the field), tool-call budget,
   loop detection on repeated (tool, canonical arguments), and a risky call after tool output
   flagged by the injection detector. A refusal returns an error ToolMessage marked
   ``outcome: refused`` and sets the stop flag: the run ends at the next decision.
3. ``HumanInTheLoopMiddleware`` (per call): the human decision for risky tools.
4. ``ExecutionRecorder.wrap_tool_call`` (after approval, around the tool): duration, outcome,
   executed (possibly edited) arguments, injection flags of the result.

Every check is a pure function of the checkpointed messages, so it gives the same answer when
LangGraph re-runs the tool node on resume (middleware before HITL runs again up to the pause; it
has no side effects before calling the handler). ``recursion_limit`` is passed on every invoke.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.types import Command

from opsfabric.agents.errors import ToolArgumentError
from opsfabric.agents.matching import canonical_json
from opsfabric.agents.settings import BudgetSettings
from opsfabric.agents.tools import SPECS_BY_NAME, validate_args


class GuardState(AgentState):
    opsfabric_stop: NotRequired[str]


@dataclass(frozen=True)
class Refusal:
    rule: str
    detail: str


def _since_request(messages: list[Any]) -> list[Any]:
    from langchain_core.messages import HumanMessage

    start = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
    return messages[start + 1 :]


def usage_totals(messages: list[Any], price_in: float, price_out: float) -> tuple[int, int, float]:
    """Tokens in/out and estimated cost of the model calls since the request."""
    tin = tout = 0
    for m in _since_request(messages):
        if isinstance(m, AIMessage) and m.usage_metadata:
            tin += m.usage_metadata.get("input_tokens", 0)
            tout += m.usage_metadata.get("output_tokens", 0)
    return tin, tout, tin / 1000 * price_in + tout / 1000 * price_out


def check_budget_before_model(messages: list[Any], budget: BudgetSettings, *, price_in: float, price_out: float,
                              elapsed_seconds: float) -> Refusal | None:
    """Budget breach before the next decision, or None."""
    steps = sum(isinstance(m, AIMessage) for m in _since_request(messages))
    if steps >= budget.max_steps:
        return Refusal("budget:steps", f"{steps} decision steps reached the limit of {budget.max_steps}")
    tin, tout, cost = usage_totals(messages, price_in, price_out)
    if tin + tout > budget.max_tokens:
        return Refusal("budget:tokens", f"{tin + tout} tokens exceed the limit of {budget.max_tokens}")
    if cost > budget.max_cost_usd:
        return Refusal("budget:cost", f"estimated cost ${cost:.4f} exceeds the limit of ${budget.max_cost_usd:.4f}")
    if elapsed_seconds > budget.max_wall_seconds:
        return Refusal("budget:wall_time", f"{elapsed_seconds:.1f} s of agent time exceed the limit of {budget.max_wall_seconds:.1f} s")
    return None


def check_tool_call(call: dict[str, Any], messages: list[Any], *, allowlist: list[str], budget: BudgetSettings,
                    loop_max_repeats: int, risky: set[str]) -> tuple[Refusal | None, dict[str, Any] | None]:
    """Refusal of a proposed tool call, or (None, validated args). Pure: same messages, same answer."""
    from opsfabric.rag.guard import detect_injection

    name, args = call["name"], call.get("args", {})
    if name not in allowlist or name not in SPECS_BY_NAME:
        return Refusal("allowlist", f"tool {name!r} is not allowed for this profile (allowed: {', '.join(allowlist)})"), None
    try:
        validated = validate_args(SPECS_BY_NAME[name], args)
    except ToolArgumentError as exc:
        return Refusal("arguments", str(exc)), None
    history = _since_request(messages)
    proposed = [c for m in history if isinstance(m, AIMessage) for c in m.tool_calls]
    position = next((i for i, c in enumerate(proposed) if c.get("id") == call.get("id")), len(proposed))
    if position + 1 > budget.max_tool_calls:
        return Refusal("budget:tool_calls", f"tool call {position + 1} exceeds the limit of {budget.max_tool_calls}"), None
    key = (name, canonical_json(args))
    repeats = sum((c["name"], canonical_json(c.get("args", {}))) == key for c in proposed[:position])
    if repeats >= loop_max_repeats:
        return Refusal("loop", f"{name} with the same arguments was already proposed {repeats} times"), None
    if name in risky:
        for m in history:
            if isinstance(m, ToolMessage) and detect_injection(str(m.content)):
                rules = sorted({f.rule for f in detect_injection(str(m.content))})
                return Refusal("injection", f"risky tool {name} refused: earlier output of {m.name} was flagged as instruction-like ({', '.join(rules)})"), None
    return None, validated


def _refusal_message(call: dict[str, Any], refusal: Refusal) -> ToolMessage:
    return ToolMessage(
        content=f"Refused by guardrail {refusal.rule}: {refusal.detail}",
        name=call["name"],
        tool_call_id=call["id"],
        status="error",
        additional_kwargs={"opsfabric": {"outcome": "refused", "rule": refusal.rule, "detail": refusal.detail}},
    )


class GuardrailMiddleware(AgentMiddleware):
    """Budgets, allowlist, argument validation, loop and injection checks (see module docstring)."""

    state_schema = GuardState

    def __init__(self, *, allowlist: list[str], approval_required: list[str], budget: BudgetSettings,
                 loop_max_repeats: int, price_in: float = 0.0, price_out: float = 0.0) -> None:
        super().__init__()
        self.allowlist = list(allowlist)
        self.risky = set(approval_required)
        self.budget = budget
        self.loop_max_repeats = loop_max_repeats
        self.price_in, self.price_out = price_in, price_out
        self.segment_started = time.monotonic()

    def start_segment(self) -> None:
        """Called by the runner before each invoke/resume: wall time excludes human waiting time."""
        self.segment_started = time.monotonic()

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: GuardState, runtime: Any) -> dict[str, Any] | None:
        reason = state.get("opsfabric_stop")
        refusal = None
        if reason is None:
            refusal = check_budget_before_model(state["messages"], self.budget, price_in=self.price_in, price_out=self.price_out,
                                                elapsed_seconds=time.monotonic() - self.segment_started)
            if refusal is None:
                return None
            reason = refusal.rule
        detail = refusal.detail if refusal else next(
            (m.additional_kwargs["opsfabric"]["detail"] for m in reversed(state["messages"])
             if isinstance(m, ToolMessage) and m.additional_kwargs.get("opsfabric", {}).get("outcome") == "refused"), reason)
        stop = AIMessage(content=f"Run stopped by guardrail {reason}: {detail}",
                         additional_kwargs={"opsfabric_stop": {"rule": reason, "detail": detail}},
                         usage_metadata={"input_tokens": 0, "output_tokens": 0, "total_tokens": 0})
        return {"messages": [stop], "opsfabric_stop": reason, "jump_to": "end"}

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        started = time.perf_counter()
        response = handler(request)
        elapsed = (time.perf_counter() - started) * 1000
        for message in getattr(response, "result", []):
            if isinstance(message, AIMessage):
                message.response_metadata["opsfabric_duration_ms"] = round(elapsed, 3)
        return response

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        call = request.tool_call
        refusal, _ = check_tool_call(call, request.state["messages"], allowlist=self.allowlist, budget=self.budget,
                                     loop_max_repeats=self.loop_max_repeats, risky=self.risky)
        if refusal is not None:
            return Command(update={"messages": [_refusal_message(call, refusal)], "opsfabric_stop": refusal.rule})
        result = handler(request)
        if isinstance(result, ToolMessage) and "opsfabric" not in result.additional_kwargs and call["name"] in self.risky:
            # the human rejected it: HITL answered without running the tool (the recorder never saw it)
            result.additional_kwargs["opsfabric"] = {"outcome": "denied", "approval": "reject"}
        return result


class ExecutionRecorder(AgentMiddleware):
    """Innermost: runs only when the tool really runs (after approval); stamps what happened."""

    def __init__(self, *, approval_required: list[str]) -> None:
        super().__init__()
        self.risky = set(approval_required)

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        from opsfabric.rag.guard import detect_injection

        from opsfabric.errors import OpsFabricError

        started = time.perf_counter()
        try:
            result = handler(request)
        except OpsFabricError as exc:  # a named backend failure is a tool error the planner may retry; others propagate
            result = ToolMessage(content=f"{type(exc).__name__}: {exc}", name=request.tool_call["name"],
                                 tool_call_id=request.tool_call["id"], status="error")
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        if isinstance(result, ToolMessage):
            meta: dict[str, Any] = {
                "outcome": "error" if result.status == "error" else "ok",
                "duration_ms": elapsed,
                "executed_args": json.loads(canonical_json(request.tool_call.get("args", {}))),
            }
            if request.tool_call["name"] in self.risky:
                meta["approval"] = "approve"
            flags = detect_injection(str(result.content))
            if flags:
                meta["injection_flags"] = sorted({f.rule for f in flags})
            result.additional_kwargs["opsfabric"] = meta
        return result
