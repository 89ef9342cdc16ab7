"""Golden-trace matching: does an agent's trajectory of tool calls match a recorded one?

Pure functions, no LangGraph, no I/O. A trajectory is the ordered list of tool calls the agent
*proposed* (refused and denied calls included, with their outcome), taken from a trace.

Modes (``TrajectorySpec.mode``):

* ``strict``: same calls, same order, nothing more.
* ``unordered``: same multiset of calls, any order.
* ``subset``: every actual call matches an expected one (the agent did nothing unexpected; it may
  have done less).
* ``superset``: every expected call is among the actual ones (the agent may have done more).
* ``partial_order``: same multiset of calls, and each ``before: [A, C]`` pair holds (A's call
  comes before C's); steps not named in a pair may be anywhere.

Arguments are compared per key by :class:`ArgRule` (exact by default; ``ignore``, ``regex``,
``numeric`` tolerance, ``normalise`` ids/timestamps). Beside the pass/fail verdict a graded score
(precision/recall/F1 of tool calls under a maximum one-to-one matching) and a step-aligned diff
with the first divergence are returned. A golden records a hash of each tool schema it used; if a
schema changed since, the verdict is ``schema_drift``, not a behaviour regression.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

# ---------------------------------------------------------------------------------------------
# Argument rules
# ---------------------------------------------------------------------------------------------
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)
_HEX_ID = re.compile(r"\b[0-9a-f]{16,64}\b", re.I)
_TIMESTAMP = re.compile(
    r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\b|\b1[5-9]\d{8}(\.\d+)?\b"
)


def normalise_ids(value: Any) -> Any:
    """UUIDs and long hex ids (run ids, thread ids, digests) replaced by ``<ID>``, recursively."""
    if isinstance(value, str):
        return _HEX_ID.sub("<ID>", _UUID.sub("<ID>", value))
    if isinstance(value, dict):
        return {k: normalise_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_ids(v) for v in value]
    return value


def normalise_timestamps(value: Any) -> Any:
    """ISO-8601 timestamps and epoch seconds replaced by ``<TS>``, recursively."""
    if isinstance(value, str):
        return _TIMESTAMP.sub("<TS>", value)
    if isinstance(value, dict):
        return {k: normalise_timestamps(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_timestamps(v) for v in value]
    return value


_NORMALISERS = {"ids": normalise_ids, "timestamps": normalise_timestamps}


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExactRule(_Rule):
    """Equal after JSON canonicalisation (1 == 1.0, key order ignored)."""

    kind: Literal["exact"] = "exact"


class IgnoreRule(_Rule):
    """Any value, or absent."""

    kind: Literal["ignore"] = "ignore"


class RegexRule(_Rule):
    """``str(actual)`` fully matches ``pattern`` (the expected value is not used)."""

    kind: Literal["regex"] = "regex"
    pattern: str


class NumericRule(_Rule):
    """``|actual - expected| <= max(abs_tol, rel_tol * |expected|)``."""

    kind: Literal["numeric"] = "numeric"
    abs_tol: float = Field(default=0.0, ge=0)
    rel_tol: float = Field(default=0.0, ge=0)


class NormaliseRule(_Rule):
    """Equal after replacing ids and/or timestamps by placeholders in both values."""

    kind: Literal["normalise"] = "normalise"
    normalisers: list[Literal["ids", "timestamps"]] = Field(default_factory=lambda: ["ids", "timestamps"])


class MentionsRule(_Rule):
    """Free text (a search query, a reason) that mentions at least one of ``any_of`` (case-insensitive substrings).

    For arguments a model writes in its own words: the golden states what the text must be about,
    not one model's wording (the expected value is not used)."""

    kind: Literal["mentions"] = "mentions"
    any_of: list[str] = Field(min_length=1)


ArgRule = Annotated[Union[ExactRule, IgnoreRule, RegexRule, NumericRule, NormaliseRule, MentionsRule], Field(discriminator="kind")]


def canonical_json(value: Any) -> str:
    """Stable JSON text of ``value`` (sorted keys, integral floats as ints): used for hashes and loop keys."""

    def fold(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {str(k): fold(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fold(x) for x in v]
        return v

    return json.dumps(fold(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def match_value(rule: Any, expected: Any, actual: Any, *, present: bool = True) -> str | None:
    """Compare one argument; ``None`` if it matches, else why not (short, readable)."""
    if isinstance(rule, IgnoreRule):
        return None
    if not present:
        return "missing"
    if isinstance(rule, MentionsRule):
        text = str(actual).lower()
        if not any(word.lower() in text for word in rule.any_of):
            return f"{actual!r} mentions none of {rule.any_of}"
        return None
    if isinstance(rule, RegexRule):
        if re.fullmatch(rule.pattern, str(actual)) is None:
            return f"{actual!r} does not match /{rule.pattern}/"
        return None
    if isinstance(rule, NumericRule):
        try:
            a, e = float(actual), float(expected)
        except (TypeError, ValueError):
            return f"{actual!r} is not a number"
        tolerance = max(rule.abs_tol, rule.rel_tol * abs(e))
        if math.isnan(a) or abs(a - e) > tolerance:
            return f"{a} differs from {e} by more than {tolerance:g}"
        return None
    if isinstance(rule, NormaliseRule):
        for name in rule.normalisers:
            expected, actual = _NORMALISERS[name](expected), _NORMALISERS[name](actual)
    if canonical_json(expected) != canonical_json(actual):
        return f"{actual!r} != expected {expected!r}"
    return None


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolCall:
    """One proposed tool call: name, arguments and what happened to it."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    outcome: str = "ok"  # ok | error | refused | denied | edited


class ExpectedCall(BaseModel):
    """One step of a golden trajectory."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    match: dict[str, ArgRule] = Field(default_factory=dict, description="Per-argument rules; unlisted: exact.")
    extra_args: Literal["forbid", "ignore"] = Field(
        default="forbid", description="Arguments the actual call has and the golden does not list."
    )
    outcome: str | None = Field(default=None, description="If set, the call's outcome must be this.")
    id: str | None = Field(default=None, description="Name for `before` pairs; default: the tool name.")

    @property
    def step_id(self) -> str:
        return self.id or self.tool


class TrajectorySpec(BaseModel):
    """How to match: the expected calls and the mode."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["strict", "unordered", "subset", "superset", "partial_order"] = "strict"
    calls: list[ExpectedCall] = Field(default_factory=list)
    before: list[tuple[str, str]] = Field(default_factory=list, description="partial_order: (A, C) means A before C.")


def compare_call(expected: ExpectedCall, actual: ToolCall) -> list[str]:
    """Why ``actual`` does not match ``expected`` (empty: it matches)."""
    if expected.tool != actual.name:
        return [f"tool {actual.name!r} != expected {expected.tool!r}"]
    problems = []
    if expected.outcome is not None and expected.outcome != actual.outcome:
        problems.append(f"outcome {actual.outcome!r} != expected {expected.outcome!r}")
    for key in sorted(set(expected.args) | set(expected.match)):
        rule = expected.match.get(key, ExactRule())
        why = match_value(rule, expected.args.get(key), actual.args.get(key), present=key in actual.args)
        if why:
            problems.append(f"argument {key}: {why}")
    if expected.extra_args == "forbid":
        extra = sorted(set(actual.args) - set(expected.args) - set(expected.match))
        if extra:
            problems.append(f"unexpected argument(s) {', '.join(extra)}")
    return problems


def _max_matching(expected: list[ExpectedCall], actual: list[ToolCall]) -> dict[int, int]:
    """Maximum one-to-one matching expected index -> actual index (augmenting paths; lists are short)."""
    ok = [[not compare_call(e, a) for a in actual] for e in expected]
    owner: dict[int, int] = {}  # actual -> expected

    def augment(i: int, seen: set[int]) -> bool:
        for j in range(len(actual)):
            if ok[i][j] and j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(expected)):
        augment(i, set())
    return {i: j for j, i in owner.items()}


def _ordered_matching(spec: TrajectorySpec, actual: list[ToolCall], limit: int = 20000) -> dict[int, int] | None:
    """A complete matching (every expected and every actual used) honouring ``before`` pairs, or None."""
    expected = spec.calls
    if len(expected) != len(actual):
        return None
    ok = [[j for j, a in enumerate(actual) if not compare_call(e, a)] for e in expected]
    ids = [e.step_id for e in expected]
    pairs = [(a, c) for a, c in spec.before]
    budget = [limit]

    def consistent(assign: dict[int, int]) -> bool:
        for a_id, c_id in pairs:
            for i, j in assign.items():
                if ids[i] != a_id:
                    continue
                for k, m in assign.items():
                    if ids[k] == c_id and not j < m:
                        return False
        return True

    def search(i: int, assign: dict[int, int], used: set[int]) -> dict[int, int] | None:
        budget[0] -= 1
        if budget[0] < 0:
            return None
        if i == len(expected):
            return dict(assign)
        for j in ok[i]:
            if j in used:
                continue
            assign[i] = j
            if consistent(assign):
                found = search(i + 1, assign, used | {j})
                if found is not None:
                    return found
            del assign[i]
        return None

    return search(0, {}, set())


@dataclass(frozen=True)
class DiffRow:
    """One row of the step-aligned diff."""

    status: Literal["same", "changed", "missing", "extra"]
    expected_index: int | None
    actual_index: int | None
    expected: str | None
    actual: str | None
    reasons: tuple[str, ...] = ()

    def render(self) -> str:
        mark = {"same": "  ", "changed": "~ ", "missing": "- ", "extra": "+ "}[self.status]
        left = f"[{self.expected_index}] {self.expected}" if self.expected is not None else "-"
        right = f"[{self.actual_index}] {self.actual}" if self.actual is not None else "-"
        why = f"   ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"{mark}{left:<48} | {right}{why}"


def _describe(call: ToolCall | ExpectedCall) -> str:
    if isinstance(call, ExpectedCall):
        return f"{call.tool}({canonical_json(call.args)})"
    suffix = "" if call.outcome == "ok" else f" [{call.outcome}]"
    return f"{call.name}({canonical_json(call.args)}){suffix}"


def step_diff(expected: list[ExpectedCall], actual: list[ToolCall]) -> list[DiffRow]:
    """Align the two sequences (longest common subsequence of matching calls) row by row.

    A missing step followed by an extra call of the same tool becomes one ``changed`` row with the
    argument differences as reasons.
    """
    n, m = len(expected), len(actual)
    same = [[not compare_call(e, a) for a in actual] for e in expected]
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            lcs[i][j] = lcs[i + 1][j + 1] + 1 if same[i][j] else max(lcs[i + 1][j], lcs[i][j + 1])
    rows: list[DiffRow] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and same[i][j]:
            rows.append(DiffRow("same", i, j, _describe(expected[i]), _describe(actual[j])))
            i, j = i + 1, j + 1
        elif i < n and j < m and expected[i].tool == actual[j].name and lcs[i + 1][j + 1] == lcs[i][j]:
            rows.append(
                DiffRow("changed", i, j, _describe(expected[i]), _describe(actual[j]), tuple(compare_call(expected[i], actual[j])))
            )
            i, j = i + 1, j + 1
        elif j < m and (i == n or lcs[i][j + 1] >= lcs[i + 1][j]):
            rows.append(DiffRow("extra", None, j, None, _describe(actual[j]), ("not in the golden trajectory",)))
            j += 1
        else:
            rows.append(DiffRow("missing", i, None, _describe(expected[i]), None, ("expected but not called",)))
            i += 1
    return rows


@dataclass(frozen=True)
class Score:
    """Graded agreement of tool calls under a maximum one-to-one matching."""

    precision: float
    recall: float
    f1: float
    matched: int
    expected: int
    actual: int


def graded_score(expected: list[ExpectedCall], actual: list[ToolCall]) -> Score:
    """Precision (share of actual calls that match an expected one), recall, F1.

    Two empty trajectories score 1.0 everywhere (the agent correctly called nothing).
    """
    matched = len(_max_matching(expected, actual))
    precision = matched / len(actual) if actual else (1.0 if not expected else 0.0)
    recall = matched / len(expected) if expected else (1.0 if not actual else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Score(round(precision, 6), round(recall, 6), round(f1, 6), matched, len(expected), len(actual))


def match_trajectory(spec: TrajectorySpec, actual: list[ToolCall]) -> tuple[bool, list[str]]:
    """Pass/fail of ``actual`` against ``spec`` in its mode, with the reasons of a failure."""
    expected = spec.calls
    matching = _max_matching(expected, actual)
    unmatched_expected = [i for i in range(len(expected)) if i not in matching]
    used = set(matching.values())
    unmatched_actual = [j for j in range(len(actual)) if j not in used]
    reasons: list[str] = []
    if spec.mode == "strict":
        if len(expected) != len(actual) or any(compare_call(e, a) for e, a in zip(expected, actual)):
            if not unmatched_expected and not unmatched_actual:
                reasons.append("strict: the same calls in a different order")
            else:
                reasons.append("strict: the calls differ from the golden ones (see the diff)")
    elif spec.mode == "unordered":
        pass
    elif spec.mode == "partial_order":
        if not unmatched_expected and not unmatched_actual and _ordered_matching(spec, actual) is None:
            reasons.append(f"partial_order: no matching honours the order pairs {spec.before}")
    if spec.mode in ("unordered", "partial_order", "superset") and unmatched_expected:
        reasons.append(f"{spec.mode}: expected call(s) not made: " + ", ".join(_describe(expected[i]) for i in unmatched_expected))
    if spec.mode in ("unordered", "partial_order", "subset") and unmatched_actual:
        reasons.append(f"{spec.mode}: call(s) not in the golden: " + ", ".join(_describe(actual[j]) for j in unmatched_actual))
    return not reasons, reasons


# ---------------------------------------------------------------------------------------------
# Tool schemas
# ---------------------------------------------------------------------------------------------
def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tool_fingerprint(description: str, parameters: dict[str, Any]) -> dict[str, str]:
    """Hashes of what the model sees of a tool: its description and its argument JSON schema."""
    return {"description": _sha(description.strip()), "parameters": _sha(canonical_json(parameters))}


def schema_drift(recorded: dict[str, dict[str, str]], current: dict[str, dict[str, str]]) -> list[str]:
    """Which recorded tool schemas differ now, by part (``tool X: parameters changed``)."""
    drift = []
    for tool in sorted(recorded):
        if tool not in current:
            drift.append(f"tool {tool}: no longer exists")
            continue
        for part in sorted(recorded[tool]):
            if recorded[tool][part] != current[tool].get(part):
                drift.append(f"tool {tool}: {part} changed ({recorded[tool][part]} -> {current[tool].get(part)})")
    return drift


# ---------------------------------------------------------------------------------------------
# Whole-run checks and the verdict
# ---------------------------------------------------------------------------------------------
class AnswerChecks(BaseModel):
    """Checks on the final answer text (case-insensitive substring / regex search)."""

    model_config = ConfigDict(extra="forbid")

    contains: list[str] = Field(default_factory=list)
    not_contains: list[str] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)


def check_answer(checks: AnswerChecks, answer: str) -> list[str]:
    """Failed answer checks, each named."""
    text = answer.lower()
    problems = [f"answer lacks {s!r}" for s in checks.contains if s.lower() not in text]
    problems += [f"answer contains {s!r}" for s in checks.not_contains if s.lower() in text]
    problems += [f"answer does not match /{p}/" for p in checks.regex if re.search(p, answer, re.I | re.S) is None]
    return problems


@dataclass(frozen=True)
class Verdict:
    """The result of matching one run against its golden."""

    status: Literal["pass", "fail", "schema_drift"]
    reasons: tuple[str, ...]
    score: Score
    diff: tuple[DiffRow, ...]
    first_divergence: DiffRow | None
    drift: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def render_diff(self) -> str:
        lines = [f"verdict: {self.status}"]
        lines += [f"  reason: {r}" for r in self.reasons]
        lines += [f"  schema drift: {d}" for d in self.drift]
        s = self.score
        lines.append(f"  score: precision {s.precision:.2f} recall {s.recall:.2f} f1 {s.f1:.2f} ({s.matched}/{s.expected} expected, {s.actual} actual)")
        if self.first_divergence is not None:
            fd = self.first_divergence
            lines.append(f"  first divergence: expected step {fd.expected_index}, actual step {fd.actual_index}: {fd.status}")
        lines.append("  golden                                           | actual")
        lines += ["  " + row.render() for row in self.diff]
        return "\n".join(lines)


def judge(
    spec: TrajectorySpec,
    actual: list[ToolCall],
    *,
    answer: str = "",
    answer_checks: AnswerChecks | None = None,
    outcome_checks: dict[str, Any] | None = None,
    observed: dict[str, Any] | None = None,
    recorded_schemas: dict[str, dict[str, str]] | None = None,
    current_schemas: dict[str, dict[str, str]] | None = None,
    extra_reasons: list[str] | None = None,
) -> Verdict:
    """Match one run against its golden: trajectory, answer, run-level outcome, schema drift.

    Args:
        spec: expected trajectory and mode.
        actual: the calls the agent proposed, in order.
        answer: the final answer text.
        answer_checks: checks on ``answer``.
        outcome_checks: expected run-level values, e.g. ``{"status": "stopped", "stop_reason": "loop"}``.
        observed: the run's actual values for those keys.
        recorded_schemas: tool fingerprints stored in the golden.
        current_schemas: tool fingerprints of the agent now.
        extra_reasons: failures found while running the scenario (a pending action no recorded decision answers).

    Returns:
        ``schema_drift`` when a tool the golden used changed (its other failures are listed too,
        as likely consequences), else ``pass``/``fail`` with reasons.
    """
    ok, reasons = match_trajectory(spec, actual)
    reasons = list(reasons)
    if answer_checks is not None:
        reasons += check_answer(answer_checks, answer)
    reasons += list(extra_reasons or [])
    observed = observed or {}
    for key, want in sorted((outcome_checks or {}).items()):
        if observed.get(key) != want:
            reasons.append(f"{key} {observed.get(key)!r} != expected {want!r}")
    diff = tuple(step_diff(spec.calls, actual))
    first = next((row for row in diff if row.status != "same"), None)
    drift = tuple(schema_drift(recorded_schemas or {}, current_schemas or {})) if recorded_schemas else ()
    status: Literal["pass", "fail", "schema_drift"] = "schema_drift" if drift else ("fail" if reasons else "pass")
    return Verdict(status, tuple(reasons), graded_score(spec.calls, actual), diff, first, drift)
