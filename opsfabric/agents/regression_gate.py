"""The statistical regression gate: a real drop in pass rate, or noise? Pure functions, no I/O.

A scenario *regresses* when its pass rate now is lower than its baseline's under a one-sided exact
test (Fisher's, on the 2x2 table of passes and failures now vs in the baseline) with a p-value
below ``alpha`` (Holm-corrected over the scenarios by default) **and** the drop is at least
``min_effect``. The suite regresses when its pooled pass count does, by the same test. A scenario
without a baseline must reach ``new_floor``. The baseline is per configuration identity (model,
its digest, prompt and tool-description hashes, temperature): a run is compared only with a
baseline of the same identity.

The deterministic special case: the offline planner gives one answer per scenario, so ``K = 1``
and a test has no power. There any scenario that passed in the baseline and fails now regresses,
and a new scenario must pass: today's strictness.

Quarantined scenarios (reason, owner, expiry date, in a reviewed file) still run and are reported;
they do not fail the gate until their quarantine expires.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any


def fisher_lower_p(passes_now: int, trials_now: int, passes_base: int, trials_base: int) -> float:
    """One-sided Fisher exact p-value that the pass rate now is *lower* than in the baseline.

    Under the null (one pass rate), the passes now follow a hypergeometric distribution given the
    pooled total; the p-value is P(X <= passes_now).
    """
    total, passes = trials_now + trials_base, passes_now + passes_base
    denom = math.comb(total, trials_now)
    lowest = max(0, trials_now - (total - passes))
    return min(1.0, sum(math.comb(passes, x) * math.comb(total - passes, trials_now - x) for x in range(lowest, passes_now + 1)) / denom)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone)."""
    ordered = sorted(p_values.items(), key=lambda kv: kv[1])
    m, running, out = len(ordered), 0.0, {}
    for i, (key, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - i) * p))
        out[key] = running
    return out


@dataclass(frozen=True)
class Quarantine:
    scenario: str
    reason: str
    owner: str
    expires: date

    def active(self, today: date) -> bool:
        return today <= self.expires


@dataclass
class ScenarioGate:
    scenario: str
    passes: int
    trials: int
    baseline: tuple[int, int] | None
    verdict: str  # ok | regressed | below_floor | quarantined
    reason: str
    p_value: float | None = None


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]
    scenarios: list[ScenarioGate] = field(default_factory=list)
    suite_p_value: float | None = None
    undetectable: list[str] = field(default_factory=list)  # even a total collapse could not reach significance at these counts
    notes: list[str] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        return [{"scenario": s.scenario, "passes": f"{s.passes}/{s.trials}",
                 "baseline": f"{s.baseline[0]}/{s.baseline[1]}" if s.baseline else "none", "verdict": s.verdict,
                 "p": "" if s.p_value is None else f"{s.p_value:.4f}", "why": s.reason} for s in self.scenarios]


@dataclass(frozen=True)
class GatePolicy:
    alpha: float = 0.05
    min_effect: float = 0.2
    suite_min_effect: float = 0.05
    new_floor: float = 0.8
    correction: str = "holm"  # holm | none
    deterministic: bool = False


def tarone_family(min_p: dict[str, float], alpha: float) -> set[str]:
    """Tarone's rule for discrete tests: the hypotheses that can reach significance at all.

    A scenario whose smallest achievable p-value (its total collapse) is above the corrected level
    can never be rejected; counting it in the correction only costs power. The family is the set for
    the smallest ``m`` with at most ``m`` hypotheses whose smallest p is at most ``alpha / m``.
    """
    for m in range(1, len(min_p) + 1):
        family = {k for k, p in min_p.items() if p <= alpha / m}
        if len(family) <= m:
            return family
    return set(min_p)


def decide(current: dict[str, tuple[int, int]], baseline: dict[str, tuple[int, int]], policy: GatePolicy, *,
           quarantine: dict[str, Quarantine] | None = None, today: date | None = None) -> GateDecision:
    """Judge the current (passes, trials) per scenario against the baseline's.

    Returns a decision naming, for every scenario that fails the gate, the test, the counts and the
    p-value (or the deterministic rule / the floor).
    """
    today = today or date.today()
    quarantine = quarantine or {}
    rows: list[ScenarioGate] = []
    raw: dict[str, float] = {}
    for sid, (c, n) in sorted(current.items()):
        base = baseline.get(sid)
        if base is None:
            floor = 1.0 if policy.deterministic else policy.new_floor
            ok = n > 0 and c / n >= floor
            rows.append(ScenarioGate(sid, c, n, None, "ok" if ok else "below_floor",
                                     "" if ok else f"new scenario: pass rate {c}/{n} is below the floor {floor:g}"))
            continue
        bc, bn = base
        if policy.deterministic:
            bad = bc == bn and c < n
            rows.append(ScenarioGate(sid, c, n, base, "regressed" if bad else "ok",
                                     f"deterministic model: passed in the baseline ({bc}/{bn}), fails now ({c}/{n})" if bad else ""))
            continue
        raw[sid] = fisher_lower_p(c, n, bc, bn)
        rows.append(ScenarioGate(sid, c, n, base, "ok", "", raw[sid]))
    undetectable: list[str] = []
    if policy.correction == "holm":
        floor_p = {r.scenario: fisher_lower_p(0, r.trials, *r.baseline) for r in rows if r.scenario in raw}
        family = tarone_family(floor_p, policy.alpha)
        adjusted = {**{k: 1.0 for k in raw}, **holm({k: raw[k] for k in family})}
        undetectable = sorted(k for k, p in floor_p.items() if k not in family and r_base_rate(baseline[k]) > 0)
    else:
        adjusted = raw
        undetectable = sorted(k for k in raw if fisher_lower_p(0, current[k][1], *baseline[k]) >= policy.alpha and r_base_rate(baseline[k]) > 0)
    for row in rows:
        if row.scenario not in raw:
            continue
        p, (bc, bn) = adjusted[row.scenario], row.baseline
        drop = bc / bn - row.passes / row.trials
        row.p_value = p
        if p < policy.alpha and drop >= policy.min_effect:
            row.verdict = "regressed"
            row.reason = (f"pass rate {row.passes}/{row.trials} vs baseline {bc}/{bn}: one-sided Fisher exact test "
                          f"p={p:.4f}{' (Holm-adjusted)' if policy.correction == 'holm' else ''} < alpha {policy.alpha}, drop {drop:.2f} >= {policy.min_effect}")
    for row in rows:
        q = quarantine.get(row.scenario)
        if q is not None and row.verdict != "ok":
            if q.active(today):
                row.reason = f"{row.reason} [quarantined until {q.expires} by {q.owner}: {q.reason}]"
                row.verdict = "quarantined"
            else:
                row.reason = f"{row.reason} [quarantine expired on {q.expires}]"
    reasons = [f"{r.scenario}: {r.reason}" for r in rows if r.verdict in ("regressed", "below_floor")]
    notes = []
    if undetectable:
        notes.append(f"{len(undetectable)} scenario(s) could not be shown to regress even if every trial failed, at these trial counts "
                     f"and alpha {policy.alpha} after correction: {', '.join(undetectable)} (run more trials)")
    suite_p = None
    judged = [r for r in rows if r.baseline is not None and not (r.scenario in quarantine and quarantine[r.scenario].active(today))]
    if judged and len({(r.trials, r.baseline[1]) for r in judged}) > 1:
        notes.append("suite test skipped: scenarios ran different numbers of trials (adaptive sampling), so pooled counts would "
                     "weigh them unlike the baseline")
        judged = []
    if judged and not policy.deterministic:
        c, n = sum(r.passes for r in judged), sum(r.trials for r in judged)
        bc, bn = sum(r.baseline[0] for r in judged), sum(r.baseline[1] for r in judged)
        suite_p = fisher_lower_p(c, n, bc, bn)
        drop = bc / bn - c / n
        if suite_p < policy.alpha and drop >= policy.suite_min_effect:
            reasons.append(f"suite: pooled pass rate {c}/{n} vs baseline {bc}/{bn}: one-sided Fisher exact test p={suite_p:.4f} "
                           f"< alpha {policy.alpha}, drop {drop:.3f}")
    return GateDecision(not reasons, reasons, rows, suite_p, undetectable, notes)


def r_base_rate(counts: tuple[int, int]) -> float:
    passes, trials = counts
    return passes / trials if trials else 0.0


def identity_of(labels: dict[str, Any], model_name: str) -> dict[str, Any]:
    """What makes two runs comparable: the model and its digest, the prompt, the tool descriptions, sampling."""
    keys = ("gen_ai.request.model", "opsfabric.model.sha256", "opsfabric.prompt.sha256", "opsfabric.tools.sha256",
            "gen_ai.request.temperature", "opsfabric.tool_calling", "opsfabric.prompt.few_shot", "opsfabric.model.kind",
            "opsfabric.planner.thresholds")
    return {"model": model_name, **{k: labels[k] for k in keys if k in labels}}


def identity_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
