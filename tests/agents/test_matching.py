"""The golden-trace matcher: modes, argument rules, graded score, diff, schema drift."""

from __future__ import annotations

import pytest

from opsfabric.agents.matching import (
    AnswerChecks,
    ExpectedCall,
    NormaliseRule,
    NumericRule,
    RegexRule,
    ToolCall,
    TrajectorySpec,
    canonical_json,
    graded_score,
    judge,
    match_trajectory,
    match_value,
    normalise_ids,
    normalise_timestamps,
    schema_drift,
    step_diff,
    tool_fingerprint,
)

pytestmark = pytest.mark.unit

A, B, C = ToolCall("a", {"x": 1}), ToolCall("b", {}), ToolCall("c", {"y": "v"})
EA, EB, EC = ExpectedCall(tool="a", args={"x": 1}), ExpectedCall(tool="b"), ExpectedCall(tool="c", args={"y": "v"})


def spec(mode, *calls, before=()):
    return TrajectorySpec(mode=mode, calls=list(calls), before=list(before))


@pytest.mark.parametrize(
    "mode, actual, ok",
    [
        ("strict", [A, B, C], True),
        ("strict", [B, A, C], False),
        ("strict", [A, B], False),
        ("strict", [A, B, C, C], False),
        ("unordered", [C, A, B], True),
        ("unordered", [C, A], False),
        ("unordered", [C, A, B, B], False),
        ("subset", [A, C], True),
        ("subset", [], True),
        ("subset", [A, ToolCall("d")], False),
        ("superset", [A, B, C, ToolCall("d")], True),
        ("superset", [A, C], False),
    ],
)
def test_modes(mode, actual, ok):
    passed, reasons = match_trajectory(spec(mode, EA, EB, EC), actual)
    assert passed is ok
    assert bool(reasons) is not ok


def test_partial_order_a_before_c_b_anywhere():
    s = spec("partial_order", EA, EB, EC, before=[("a", "c")])
    for order in ([A, B, C], [B, A, C], [A, C, B]):
        assert match_trajectory(s, order)[0], order
    for order in ([C, A, B], [C, B, A], [B, C, A]):
        passed, reasons = match_trajectory(s, order)
        assert not passed and "order pairs" in reasons[0]
    assert not match_trajectory(s, [A, C])[0]  # b is still required


def test_partial_order_with_repeated_tool_uses_step_ids():
    first = ExpectedCall(tool="a", args={"x": 1}, id="first")
    second = ExpectedCall(tool="a", args={"x": 2}, id="second")
    s = spec("partial_order", first, second, before=[("first", "second")])
    assert match_trajectory(s, [ToolCall("a", {"x": 1}), ToolCall("a", {"x": 2})])[0]
    assert not match_trajectory(s, [ToolCall("a", {"x": 2}), ToolCall("a", {"x": 1})])[0]


def test_argument_rules():
    assert match_value(NumericRule(abs_tol=0.01), 0.75, 0.755) is None
    assert "more than" in match_value(NumericRule(abs_tol=0.001), 0.75, 0.755)
    assert match_value(NumericRule(rel_tol=0.1), 100, 109) is None
    assert match_value(NumericRule(rel_tol=0.1), 100, 111) is not None
    assert match_value(NumericRule(), 1, "abc") == "'abc' is not a number"
    assert match_value(RegexRule(pattern=r"docs-v\d{4}"), None, "docs-v0003") is None
    assert match_value(RegexRule(pattern=r"docs-v\d{4}"), None, "docs-live") is not None
    rule = NormaliseRule()
    assert match_value(rule, "run 0f3e9a2b4c5d6e7f8a9b at 2026-01-01T10:00:00Z", "run 1234567890abcdef1234 at 2026-11-26T09:00:00Z") is None
    assert match_value(rule, "run 0f3e9a2b4c5d6e7f8a9b", "job 0f3e9a2b4c5d6e7f8a9b") is not None
    assert match_value(NormaliseRule(normalisers=["timestamps"]), "a 2026-01-01T10:00:00Z", "a 2027-02-02 11:00") is None


def test_exact_is_canonical_and_missing_extra_args_are_named():
    assert canonical_json({"b": 1.0, "a": [2]}) == canonical_json({"a": [2], "b": 1})
    e = ExpectedCall(tool="compare", args={"a": 1, "b": 2})
    from opsfabric.agents.matching import compare_call

    assert compare_call(e, ToolCall("compare", {"a": 1})) == ["argument b: missing"]
    assert compare_call(e, ToolCall("compare", {"a": 1, "b": 2, "c": 3})) == ["unexpected argument(s) c"]
    assert compare_call(e.model_copy(update={"extra_args": "ignore"}), ToolCall("compare", {"a": 1, "b": 2, "c": 3})) == []
    assert compare_call(ExpectedCall(tool="t", outcome="denied"), ToolCall("t", outcome="ok")) == ["outcome 'ok' != expected 'denied'"]


def test_normalisers_are_recursive():
    value = {"ids": ["0f3e9a2b-1111-2222-3333-444455556666"], "when": {"t": "2026-11-26T09:05:39+00:00"}}
    assert normalise_timestamps(normalise_ids(value)) == {"ids": ["<ID>"], "when": {"t": "<TS>"}}


def test_graded_score():
    s = graded_score([EA, EB, EC], [A, C, ToolCall("d")])
    assert (s.matched, s.precision, s.recall) == (2, pytest.approx(2 / 3, abs=1e-5), pytest.approx(2 / 3, abs=1e-5))
    assert graded_score([], []).f1 == 1.0
    assert graded_score([EA], []).f1 == 0.0


def test_step_diff_names_first_divergence_and_changed_argument():
    actual = [A, ToolCall("b", {"k": 1}), C, ToolCall("d")]
    rows = step_diff([EA, EB, EC], actual)
    assert [r.status for r in rows] == ["same", "changed", "same", "extra"]
    assert rows[1].reasons == ("unexpected argument(s) k",)
    verdict = judge(spec("strict", EA, EB, EC), actual)
    assert verdict.status == "fail"
    assert verdict.first_divergence.expected_index == 1 and verdict.first_divergence.actual_index == 1
    text = verdict.render_diff()
    assert "first divergence: expected step 1, actual step 1: changed" in text and "+ " in text


def test_strict_names_a_pure_reordering():
    assert match_trajectory(spec("strict", EA, EB), [B, A])[1] == ["strict: the same calls in a different order"]
    assert match_trajectory(spec("strict", EA, EB), [A])[1] == ["strict: the calls differ from the golden ones (see the diff)"]


def test_step_diff_missing_step():
    rows = step_diff([EA, EB, EC], [A, C])
    assert [r.status for r in rows] == ["same", "missing", "same"]


def test_schema_drift_is_reported_as_drift_not_regression():
    params = {"type": "object", "properties": {"version": {"type": "integer"}}}
    old = {"a": tool_fingerprint("Read a thing.", params)}
    same = judge(spec("strict", EA), [A], recorded_schemas=old, current_schemas=old)
    assert same.status == "pass"
    changed = {"a": tool_fingerprint("Read a thing.", {**params, "required": ["version"]})}
    verdict = judge(spec("strict", EA), [A], recorded_schemas=old, current_schemas=changed)
    assert verdict.status == "schema_drift" and not verdict.reasons
    assert verdict.drift[0].startswith("tool a: parameters changed")
    described = {"a": tool_fingerprint("Read another thing.", params)}
    assert schema_drift(old, described)[0].startswith("tool a: description changed")
    assert schema_drift(old, {}) == ["tool a: no longer exists"]


def test_answer_and_outcome_checks():
    verdict = judge(
        spec("strict"),
        [],
        answer="Offline planner: I need more detail.",
        answer_checks=AnswerChecks(contains=["offline planner"], not_contains=["promoted"], regex=[r"need .* detail"]),
        outcome_checks={"status": "abstained"},
        observed={"status": "abstained"},
    )
    assert verdict.passed
    verdict = judge(
        spec("strict"), [], answer="Promoted.", answer_checks=AnswerChecks(not_contains=["promoted"]),
        outcome_checks={"status": "abstained"}, observed={"status": "completed"},
    )
    assert verdict.reasons == ("answer contains 'promoted'", "status 'completed' != expected 'abstained'")


@pytest.mark.unit
def test_mentions_rule_judges_free_text_by_what_it_is_about():
    from opsfabric.agents.matching import MentionsRule, match_value

    rule = MentionsRule(any_of=["python software foundation", "PSF"])
    assert match_value(rule, None, "Who runs the PSF?") is None
    assert match_value(rule, None, "the Python Software Foundation history") is None
    assert "mentions none of" in match_value(rule, None, "release schedule")
    assert match_value(rule, None, None, present=False) == "missing"
