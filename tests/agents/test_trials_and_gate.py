"""K trials and the statistical gate: estimators, intervals, early stopping, exact test, Holm, quarantine, identities."""

from __future__ import annotations

import math
from datetime import date

import pytest

from opsfabric.agents.regression_gate import GatePolicy, Quarantine, decide, fisher_lower_p, holm, identity_key, identity_of
from opsfabric.agents.trials import early_decision, pass_at_k, pass_hat_k, percentile, wilson

pytestmark = pytest.mark.unit


def test_pass_at_k_and_pass_hat_k_are_the_unbiased_estimators():
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 1, 5) == 1.0 and pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - math.comb(7, 2) / math.comb(10, 2))
    assert pass_hat_k(5, 5, 5) == 1.0 and pass_hat_k(5, 4, 5) == 0.0
    assert pass_hat_k(10, 8, 3) == pytest.approx(math.comb(8, 3) / math.comb(10, 3))
    assert pass_hat_k(4, 2, 1) == pass_at_k(4, 2, 1) == 0.5  # k = 1: both are the pass rate
    with pytest.raises(ValueError):
        pass_hat_k(3, 1, 4)


def test_wilson_interval_matches_the_textbook_and_stays_in_bounds():
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # Wilson 1927 / Newcombe 1998 worked value
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)


def test_early_stopping_decides_only_when_the_interval_excludes_the_threshold():
    assert early_decision(0, 3, 0.8) == "below"  # 0/3: upper bound 0.56 < 0.8
    assert early_decision(3, 3, 0.8) is None  # 3/3: lower bound 0.44, could still be below 0.8
    assert early_decision(20, 20, 0.8) == "above"
    assert early_decision(5, 10, 0.5) is None


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5 and percentile([5], 0.9) == 5 and math.isnan(percentile([], 0.5))


def test_fisher_one_sided_p_values():
    assert fisher_lower_p(0, 5, 5, 5) == pytest.approx(1 / math.comb(10, 5))  # the most extreme table: 1/252
    assert fisher_lower_p(5, 5, 5, 5) == 1.0
    assert fisher_lower_p(3, 10, 9, 10) == pytest.approx(0.0099, abs=5e-4)  # scipy.stats.fisher_exact(..., 'less')
    assert fisher_lower_p(5, 5, 0, 5) == 1.0  # better than the baseline is never a regression


def test_holm_adjusts_step_down_and_monotone():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def test_the_gate_names_the_test_the_counts_and_the_p_value():
    policy = GatePolicy(alpha=0.05, min_effect=0.2, new_floor=0.8)
    decision = decide({"a": (0, 10), "b": (9, 10), "new": (2, 5)}, {"a": (10, 10), "b": (10, 10)}, policy)
    assert not decision.passed
    a = next(s for s in decision.scenarios if s.scenario == "a")
    assert a.verdict == "regressed" and "one-sided Fisher exact test" in a.reason and "0/10 vs baseline 10/10" in a.reason
    assert a.p_value < 0.05
    assert next(s for s in decision.scenarios if s.scenario == "b").verdict == "ok"  # 9/10 vs 10/10 is noise
    assert next(s for s in decision.scenarios if s.scenario == "new").verdict == "below_floor"
    assert any(r.startswith("suite: pooled pass rate") for r in decision.reasons)


def test_noise_and_small_effects_do_not_fail_the_gate():
    policy = GatePolicy(alpha=0.05, min_effect=0.2)
    assert decide({"a": (3, 5)}, {"a": (5, 5)}, policy).passed  # p = 0.22: not shown
    big_but_small = decide({"a": (85, 100)}, {"a": (100, 100)}, GatePolicy(alpha=0.05, min_effect=0.2, correction="none"))
    assert big_but_small.scenarios[0].p_value < 0.05 and big_but_small.scenarios[0].verdict == "ok"  # shown, but under min_effect


def test_the_deterministic_case_keeps_todays_strictness():
    policy = GatePolicy(deterministic=True)
    decision = decide({"a": (0, 1), "b": (1, 1), "c": (0, 1)}, {"a": (1, 1), "b": (1, 1)}, policy)
    verdicts = {s.scenario: s.verdict for s in decision.scenarios}
    assert verdicts == {"a": "regressed", "b": "ok", "c": "below_floor"}
    assert decide({"a": (1, 1)}, {"a": (0, 1)}, policy).passed  # a fixed scenario is no regression


def test_quarantine_holds_until_its_expiry():
    q = {"a": Quarantine("a", "flaky on the local model", "ops-team", date(2026, 12, 31))}
    current, base = {"a": (0, 10)}, {"a": (10, 10)}
    held = decide(current, base, GatePolicy(), quarantine=q, today=date(2026, 12, 2))
    assert held.passed and held.scenarios[0].verdict == "quarantined" and "quarantined until 2026-12-31 by ops-team" in held.scenarios[0].reason
    expired = decide(current, base, GatePolicy(), quarantine=q, today=date(2027, 1, 1))
    assert not expired.passed and "quarantine expired on 2026-12-31" in expired.reasons[0]


def test_identity_changes_with_model_digest_prompt_tools_and_temperature():
    labels = {"opsfabric.model.sha256": "aa", "opsfabric.prompt.sha256": "p1", "opsfabric.tools.sha256": "t1", "gen_ai.request.temperature": 0.7,
              "opsfabric.server.url": "http://127.0.0.1:1/v1"}
    base = identity_key(identity_of(labels, "smollm2"))
    assert identity_key(identity_of({**labels, "opsfabric.server.url": "http://other:2/v1"}, "smollm2")) == base  # where it runs: not identity
    for change in ({"opsfabric.model.sha256": "bb"}, {"opsfabric.prompt.sha256": "p2"}, {"opsfabric.tools.sha256": "t2"},
                   {"gen_ai.request.temperature": 0.0}):
        assert identity_key(identity_of({**labels, **change}, "smollm2")) != base
    assert identity_key(identity_of(labels, "other-model")) != base


def test_quarantine_file_errors_are_named(tmp_path):
    from opsfabric.agents.errors import GoldenError
    from opsfabric.agents.regression import load_quarantine

    path = tmp_path / "q.yaml"
    path.write_text("quarantine:\n- {scenario: a, reason: r, owner: o, expires: 2026-12-31}\n")
    assert load_quarantine(path, {"a"})["a"].expires == date(2026, 12, 31)
    with pytest.raises(GoldenError, match=r"quarantine\[0\] names unknown scenario 'a'"):
        load_quarantine(path, {"b"})
    path.write_text("quarantine:\n- {scenario: a, reason: r}\n")
    with pytest.raises(GoldenError, match=r"quarantine\[0\] lacks \['owner', 'expires'\]"):
        load_quarantine(path, {"a"})
    path.write_text("quarantine:\n- {scenario: a, reason: r, owner: o, expires: soon}\n")
    with pytest.raises(GoldenError, match="is not a date"):
        load_quarantine(path, {"a"})


def test_exact_mcnemar_p_values():
    from opsfabric.agents.compare import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # all six discordant pairs one way: 2 * 0.5^6
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)  # scipy.stats.binomtest(1, 10).pvalue


def test_pairing_by_seed_counts_discordant_pairs_and_the_effect_interval():
    from types import SimpleNamespace

    from opsfabric.agents.compare import Comparison, pair

    def runs(*passed):
        return [SimpleNamespace(verdict=SimpleNamespace(passed=p, first_divergence=None), cost_usd=0.0) for p in passed]

    s = pair("x", runs(True, True, False, True), runs(False, True, False, False))
    assert (s.passes_a, s.passes_b, s.a_only, s.b_only, s.change) == (3, 1, 2, 0, "worse")
    same = pair("y", runs(True, False), runs(False, True))
    assert (same.a_only, same.b_only, same.change, same.p_value) == (1, 1, "same", 1.0)
    comparison = Comparison([s, same], trials=4, seed=0)
    diff, low, high = comparison.effect()
    assert diff == pytest.approx(((1 - 3) / 4 + 0) / 2) and low <= diff <= high
    assert comparison.effect() == comparison.effect()  # seeded bootstrap: the same interval every time
    assert (comparison.a_only, comparison.b_only) == (3, 1)


def test_a_total_collapse_at_k5_among_36_scenarios_is_said_to_be_undetectable_not_passed_silently():
    # 36 scenarios at 5/5, one collapses to 0/5: its p (1/252 = 0.004) cannot survive any family-wise correction over
    # 36 equally able scenarios (Tarone: none reaches 0.05/13), so the gate cannot show it and says so
    baseline = {f"s{i:02d}": (5, 5) for i in range(36)}
    decision = decide({**baseline, "s00": (0, 5)}, baseline, GatePolicy())
    assert decision.passed and len(decision.undetectable) == 36
    assert "could not be shown to regress even if every trial failed" in decision.notes[0]
    # scenarios with a 0 baseline cannot drop: they are not in the family and cost no power
    mixed = {**{f"z{i}": (0, 5) for i in range(30)}, **{f"s{i}": (5, 5) for i in range(6)}}
    collapsed = decide({**mixed, "s0": (0, 5)}, mixed, GatePolicy())
    assert not collapsed.passed and any(r.startswith("s0:") and "Holm" in r for r in collapsed.reasons)
    # and at K=10 the same collapse among 36 is shown (p = 1/184756 survives the correction)
    ten = {f"s{i:02d}": (10, 10) for i in range(36)}
    assert not decide({**ten, "s00": (0, 10)}, ten, GatePolicy()).passed


def test_tarone_family_drops_hypotheses_that_cannot_reach_significance():
    from opsfabric.agents.regression_gate import tarone_family

    assert tarone_family({"a": 0.004, "b": 0.004, "c": 1.0, "d": 1.0}, 0.05) == {"a", "b"}
    assert tarone_family({f"x{i}": 0.004 for i in range(36)}, 0.05) == set()  # none can reach 0.05/m for the m that fits


def test_the_baseline_only_rises():
    from types import SimpleNamespace

    from opsfabric.agents.regression import next_baseline

    report = SimpleNamespace(counts={"a": (3, 5), "b": (5, 5), "c": (2, 5)})
    assert next_baseline({"a": (5, 5), "b": (4, 5), "gone": (5, 5)}, report) == {"a": (5, 5), "b": (5, 5), "c": (2, 5)}


def test_the_suite_test_is_skipped_when_adaptive_sampling_made_trial_counts_differ():
    decision = decide({"a": (0, 3), "b": (10, 10)}, {"a": (5, 5), "b": (5, 5)}, GatePolicy())
    assert decision.suite_p_value is None and any("suite test skipped" in n for n in decision.notes)


def test_adaptive_thresholds_stop_scenarios_that_cannot_regress_at_the_minimum():
    from opsfabric.agents.regression import thresholds

    limits = thresholds({"a": (5, 5), "b": (0, 5), "c": (1, 5)}, GatePolicy(min_effect=0.2))
    assert limits["a"] == pytest.approx(0.8) and limits["b"] == limits["c"] == -1.0
    assert early_decision(0, 3, limits["b"]) == "above"  # nothing to decide: stop after the minimum
