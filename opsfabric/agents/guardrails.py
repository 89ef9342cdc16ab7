"""Guardrails enforced outside the model, as LangChain agent middleware.

Enforcement points (in the order a tool call meets them):

1. ``GuardrailMiddleware.before_model`` (before every decision): stop flag set by an earlier
   breach, steps, tokens, estimated cost, wall time. A breach ends the run (``jump_to: end``) with
   an answer naming the reason, and the reason in state (``opsfabric_stop``).
2. ``GuardrailMiddleware.wrap_tool_call`` (before approval, before the tool): hard allowlist of
   the profile, pydantic argument validation (the message names the field), tool-call budget,
   loop detection on repeated (tool, canonical validated arguments), a risky call proposed together
   with other calls in one decision (parallel tool calls: its siblings' output could not be checked
   first), and a risky call after tool output flagged by the injection detector or reporting
   ``flagged_sources``. A refusal returns an error ToolMessage marked
   ``outcome: refused`` and sets the stop flag: the run ends at the next decision.
3. ``HumanInTheLoopMiddleware`` (per call): the human decision for risky tools.
4. ``ExecutionRecorder.wrap_tool_call`` (after approval, around the tool): a durable "started"
   record for a risky call (a call that already started is refused: at most once), then duration,
   outcome, executed (possibly edited) arguments, injection flags of the result.

Every check is a pure function of the checkpointed messages, so it gives the same answer when
LangGraph re-runs the tool node on resume (middleware before HITL runs again up to the pause; it
has no side effects before calling the handler). ``recursion_limit`` is passed on every invoke.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState, hook_config
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.types import Command

from opsfabric.agents.errors import ToolArgumentError
from opsfabric.agents.matching import canonical_json
from opsfabric.agents.settings import BudgetSettings
from opsfabric.agents.tools import SPECS_BY_NAME, validate_args


def _first_stop(current: str | None, new: str | None) -> str | None:
    """Reducer of ``opsfabric_stop``: several refusals in one step (parallel calls) keep the first reason."""
    return current or new


class GuardState(AgentState):
    opsfabric_stop: NotRequired[Annotated[str, _first_stop]]
    opsfabric_profile: NotRequired[str]  # the profile the thread was started with; a resume must use the same


@dataclass(frozen=True)
class Refusal:
    rule: str
    detail: str


def _since_request(messages: list[Any]) -> list[Any]:
    from langchain_core.messages import HumanMessage

    start = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
    return messages[start + 1 :]


def message_usage(m: AIMessage, *, reported_only: bool = False) -> tuple[int, int, bool]:
    """(input tokens, output tokens, estimated) of one model message.

    An endpoint that reports no usage gets an estimate (4 characters a token of what it wrote, plus
    its tool-call arguments), so the token and cost budgets still bind; the trace labels it
    ``opsfabric.usage.estimated``. Messages of the offline planner (``reported_only``) cost nothing.
    """
    usage = m.usage_metadata or {}
    if usage or reported_only or m.additional_kwargs.get("opsfabric_stop"):
        return usage.get("input_tokens", 0), usage.get("output_tokens", 0), False
    written = len(str(m.content)) + sum(len(canonical_json(c.get("args", {}))) + len(c["name"]) for c in m.tool_calls)
    return 0, written // 4, True


def usage_totals(messages: list[Any], price_in: float, price_out: float, *, reported_only: bool = False) -> tuple[int, int, float]:
    """Tokens in/out and estimated cost of the model calls since the request (estimates where none was reported)."""
    tin = tout = 0
    for m in _since_request(messages):
        if isinstance(m, AIMessage):
            i, o, _ = message_usage(m, reported_only=reported_only)
            tin, tout = tin + i, tout + o
    return tin, tout, tin / 1000 * price_in + tout / 1000 * price_out


def check_budget_before_model(messages: list[Any], budget: BudgetSettings, *, price_in: float, price_out: float,
                              elapsed_seconds: float, reported_only: bool = False) -> Refusal | None:
    """Budget breach before the next decision, or None."""
    steps = sum(isinstance(m, AIMessage) for m in _since_request(messages))
    if steps >= budget.max_steps:
        return Refusal("budget:steps", f"{steps} decision steps reached the limit of {budget.max_steps}")
    tin, tout, cost = usage_totals(messages, price_in, price_out, reported_only=reported_only)
    if tin + tout > budget.max_tokens:
        return Refusal("budget:tokens", f"{tin + tout} tokens exceed the limit of {budget.max_tokens}")
    if cost > budget.max_cost_usd:
        return Refusal("budget:cost", f"estimated cost ${cost:.4f} exceeds the limit of ${budget.max_cost_usd:.4f}")
    if elapsed_seconds > budget.max_wall_seconds:
        return Refusal("budget:wall_time", f"{elapsed_seconds:.1f} s of agent time exceed the limit of {budget.max_wall_seconds:.1f} s")
    return None


def _call_key(call: dict[str, Any], specs: dict[str, Any]) -> tuple[str, str]:
    """(tool, canonical JSON of the validated arguments); the raw arguments when they do not validate."""
    args = call.get("args", {})
    spec = specs.get(call["name"])
    if spec is not None:
        try:
            args = validate_args(spec, args)
        except ToolArgumentError:
            pass
    return call["name"], canonical_json(args)


def recorded_seconds(messages: list[Any]) -> float:
    """Agent time recorded since the request: model-call and tool-call durations stamped on the messages.

    It survives resumes (it lives in the checkpoint), and excludes the time a human took to answer.
    """
    total = 0.0
    for m in _since_request(messages):
        if isinstance(m, AIMessage):
            total += float(m.response_metadata.get("opsfabric_duration_ms", 0.0) or 0.0)
        elif isinstance(m, ToolMessage):
            total += float(m.additional_kwargs.get("opsfabric", {}).get("duration_ms", 0.0) or 0.0)
    return total / 1000


def check_tool_call(call: dict[str, Any], messages: list[Any], *, allowlist: list[str], budget: BudgetSettings,
                    loop_max_repeats: int, risky: set[str],
                    specs: dict[str, Any] | None = None) -> tuple[Refusal | None, dict[str, Any] | None]:
    """Refusal of a proposed tool call, or (None, validated args). Pure: same messages, same answer.

    ``specs`` maps tool names to the specs the agent was built with (default: the shipped ones).
    """
    specs = SPECS_BY_NAME if specs is None else specs
    name, args = call["name"], call.get("args", {})
    if name not in allowlist or name not in specs:
        return Refusal("allowlist", f"tool {name!r} is not allowed for this profile (allowed: {', '.join(allowlist)})"), None
    try:
        validated = validate_args(specs[name], args)
    except ToolArgumentError as exc:
        return Refusal("arguments", str(exc)), None
    history = _since_request(messages)
    if name in risky:
        # a model may propose several calls in one message (parallel tool calls): a risky call beside
        # others would run before their output could be checked for injected instructions
        siblings = next((m.tool_calls for m in history if isinstance(m, AIMessage)
                         and any(c.get("id") == call.get("id") for c in m.tool_calls)), [])
        others = [c["name"] for c in siblings if c.get("id") != call.get("id")]
        if others:
            return Refusal("parallel", f"risky tool {name} was proposed together with {', '.join(others)} in one decision: "
                                       "a risky call must be proposed alone, after the output of earlier calls was checked"), None
    proposed = [c for m in history if isinstance(m, AIMessage) for c in m.tool_calls]
    position = next((i for i, c in enumerate(proposed) if c.get("id") == call.get("id")), len(proposed))
    if position + 1 > budget.max_tool_calls:
        return Refusal("budget:tool_calls", f"tool call {position + 1} exceeds the limit of {budget.max_tool_calls}"), None
    key = (name, canonical_json(validated))  # validated: defaults filled, so {"version": 4} and its spelled-out twin are one call
    repeats = sum(_call_key(c, specs) == key for c in proposed[:position])
    if repeats >= loop_max_repeats:
        return Refusal("loop", f"{name} with the same arguments was already proposed {repeats} times"), None
    if name in risky:
        for m in history:
            if not isinstance(m, ToolMessage):
                continue
            stamped = m.additional_kwargs.get("opsfabric", {}).get("injection_flags", [])
            rules = sorted(set(stamped) | set(injection_flags(m.content)))
            if rules:
                return Refusal("injection", f"risky tool {name} refused: earlier output of {m.name} was flagged as instruction-like ({', '.join(rules)})"), None
    return None, validated


def unique_tool_call_ids(message: AIMessage, used: set[Any], *, step: int) -> None:
    """Give every tool call of ``message`` an id no earlier call of the thread has (in place).

    The checks (parallel siblings, position in the tool-call budget, loop counting) and the trace
    find a call by its id. Ids come from the model; an endpoint may leave them empty or repeat one
    from an earlier turn, which would let a call borrow an earlier call's history.
    """
    for k, call in enumerate(message.tool_calls):
        if not call.get("id") or call["id"] in used:
            call["id"] = f"{call.get('id') or 'call'}-opsfabric-{step}-{k}"
        used.add(call["id"])


def injection_flags(content: Any) -> list[str]:
    """Injection rules a tool result trips: the detector on its text, plus ``flagged_sources`` a tool reported.

    ``PlatformBackend.search_docs`` drops instruction-like chunks before the agent sees them and
    lists their documents in ``flagged_sources``: the text is then clean, but the retrieval was
    still poisoned, so it counts as flagged (rule ``flagged_sources``).
    """
    from opsfabric.rag.guard import detect_injection

    text = str(content)
    rules = {f.rule for f in detect_injection(text)}
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, dict) and parsed.get("flagged_sources"):
        rules.add("flagged_sources")
    return sorted(rules)


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
                 loop_max_repeats: int, price_in: float = 0.0, price_out: float = 0.0,
                 specs: dict[str, Any] | None = None, reported_usage_only: bool = False) -> None:
        super().__init__()
        self.reported_usage_only = reported_usage_only  # the offline planner: its zero usage is exact, not missing
        self.allowlist = list(allowlist)
        self.risky = set(approval_required)
        self.budget = budget
        self.loop_max_repeats = loop_max_repeats
        self.price_in, self.price_out = price_in, price_out
        self.specs = dict(SPECS_BY_NAME if specs is None else specs)
        self._segments: dict[str, float] = {}  # thread id -> start of its current invoke/resume (one agent may serve many threads)

    def start_segment(self, thread_id: str) -> None:
        """Called by the runner before each invoke/resume of ``thread_id``. The wall budget counts the larger of this
        segment's time and the agent time recorded on the run's messages (all segments), never a human's wait."""
        self._segments[thread_id] = time.monotonic()

    def segment_seconds(self, thread_id: str) -> float:
        started = self._segments.get(thread_id)
        return 0.0 if started is None else time.monotonic() - started

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: GuardState, runtime: Any) -> dict[str, Any] | None:
        reason = state.get("opsfabric_stop") or None  # the reducer's channel starts as ""
        refusal = None
        if reason is None:
            refusal = check_budget_before_model(state["messages"], self.budget, price_in=self.price_in, price_out=self.price_out,
                                                elapsed_seconds=max(self.segment_seconds(_current_thread_id()),
                                                                    recorded_seconds(state["messages"])),
                                                reported_only=self.reported_usage_only)
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
        used = {c.get("id") for m in request.messages if isinstance(m, AIMessage) for c in m.tool_calls}
        for message in getattr(response, "result", []):
            if isinstance(message, AIMessage):
                message.response_metadata["opsfabric_duration_ms"] = round(elapsed, 3)
                unique_tool_call_ids(message, used, step=len(request.messages))
        return response

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        call = request.tool_call
        refusal, _ = check_tool_call(call, request.state["messages"], allowlist=self.allowlist, budget=self.budget,
                                     loop_max_repeats=self.loop_max_repeats, risky=self.risky, specs=self.specs)
        if refusal is not None:
            return Command(update={"messages": [_refusal_message(call, refusal)], "opsfabric_stop": refusal.rule})
        result = handler(request)
        if isinstance(result, ToolMessage) and "opsfabric" not in result.additional_kwargs and call["name"] in self.risky:
            # the human rejected it: HITL answered without running the tool (the recorder never saw it)
            result.additional_kwargs["opsfabric"] = {"outcome": "denied", "approval": "reject"}
        return result


OUTCOME_UNKNOWN = "outcome_unknown"


class ActionLedger:
    """Durable "started" records of risky tool calls (a table in the checkpoint database).

    A record is written, and committed, before the backend is called; it is never removed. A
    tool call (thread, tool call id) found there already started once: whether its side effect
    happened is unknown (the process may have been killed, or the backend may have failed after
    acting), so it is refused instead of run again.
    """

    def __init__(self, path: str | None, busy_timeout_seconds: float = 30.0) -> None:
        import sqlite3

        self.path = path or ":memory:"
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=busy_timeout_seconds, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds * 1000)}")
        self._conn.execute("CREATE TABLE IF NOT EXISTS opsfabric_risky_starts (thread_id TEXT NOT NULL, tool_call_id TEXT NOT NULL, "
                           "tool TEXT NOT NULL, args TEXT NOT NULL, started_at REAL NOT NULL, PRIMARY KEY (thread_id, tool_call_id))")

    def start(self, thread_id: str, tool_call_id: str, tool: str, args: dict[str, Any]) -> bool:
        """Record the start; False if this call already started (in this or any other process)."""
        import sqlite3

        try:
            self._conn.execute("INSERT INTO opsfabric_risky_starts VALUES (?, ?, ?, ?, ?)",
                               (thread_id, tool_call_id, tool, canonical_json(args), time.time()))
        except sqlite3.IntegrityError:
            return False
        return True


def _thread_id(request: Any) -> str:
    config = getattr(getattr(request, "runtime", None), "config", None) or {}
    thread = (config.get("configurable") or {}).get("thread_id")
    return str(thread) if thread is not None else _current_thread_id()


def _current_thread_id() -> str:
    from langgraph.config import get_config

    return str(get_config().get("configurable", {}).get("thread_id"))


class ExecutionRecorder(AgentMiddleware):
    """Innermost: runs only when the tool really runs (after approval); stamps what happened.

    For a risky tool it first writes a durable "started" record (:class:`ActionLedger`); a call
    that already started is refused (``outcome_unknown``) rather than run twice, and any exception
    of a risky tool becomes an error tool message that stops the run (its outcome is unknown).
    """

    def __init__(self, *, approval_required: list[str], ledger: ActionLedger | None = None) -> None:
        super().__init__()
        self.risky = set(approval_required)
        self.ledger = ledger or ActionLedger(None)

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        from opsfabric.agents.errors import OutcomeUnknownError
        from opsfabric.agents.trace import redact_text
        from opsfabric.errors import OpsFabricError

        call = request.tool_call
        risky = call["name"] in self.risky
        executed_args = json.loads(canonical_json(call.get("args", {})))
        if risky and not self.ledger.start(_thread_id(request), call["id"], call["name"], executed_args):
            refusal = Refusal(OUTCOME_UNKNOWN, f"{call['name']} (tool call {call['id']}) already started once and its outcome is unknown: "
                                               "it may have run; check the platform before asking again")
            message = _refusal_message(call, refusal)
            message.additional_kwargs["opsfabric"].update(approval="approve", executed_args=executed_args)
            return Command(update={"messages": [message], "opsfabric_stop": OUTCOME_UNKNOWN})
        started = time.perf_counter()
        stop: str | None = None
        try:
            result = handler(request)
        except Exception as exc:
            named_refusal = isinstance(exc, OpsFabricError) and not isinstance(exc, OutcomeUnknownError)
            if named_refusal:  # refused before acting (unknown version, no such batch): a tool error the planner may retry
                result = ToolMessage(content=redact_text(f"{type(exc).__name__}: {exc}"), name=call["name"],
                                     tool_call_id=call["id"], status="error")
            elif not risky:
                raise
            else:
                # the backend may have acted before failing: record the error, never let the run retry it
                result = ToolMessage(content=redact_text(f"{type(exc).__name__}: {exc} (outcome unknown: it may have run; "
                                                         f"check the platform; thread {_thread_id(request)})"),
                                     name=call["name"], tool_call_id=call["id"], status="error")
                stop = OUTCOME_UNKNOWN
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        if isinstance(result, ToolMessage):
            meta: dict[str, Any] = {
                "outcome": "error" if result.status == "error" else "ok",
                "duration_ms": elapsed,
                "executed_args": executed_args,
            }
            if risky:
                meta["approval"] = "approve"
            flags = injection_flags(result.content)
            if flags:
                meta["injection_flags"] = flags
            if stop:
                meta.update(error_type=OUTCOME_UNKNOWN, detail=str(result.content))
            result.additional_kwargs["opsfabric"] = meta
        if stop:
            return Command(update={"messages": [result], "opsfabric_stop": stop})
        return result
