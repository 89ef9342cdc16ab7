"""K trials of a scenario and what they mean: pass@k, pass^k, a Wilson interval, trajectory classes, early stopping.

Pure functions over :class:`~opsfabric.agents.golden.ScenarioRun` results; no I/O.

* ``pass@k`` (at least one of k trials passes) and ``pass^k`` (all k pass; τ-bench) are the
  unbiased estimators from ``n`` trials with ``c`` passes: ``1 - C(n-c, k) / C(n, k)`` and
  ``C(c, k) / C(n, k)``. With ``k = n`` they are "any passed" and "all passed".
* The Wilson score interval of the pass rate ``c / n`` (95% by default).
* Trajectory classes: trials grouped by what they did, under the golden's own equivalence (the
  outcome class, and each call's tool, outcome and arguments as the golden's rules see them: an
  ignored argument is left out, a free-text one is reduced to whether it matches), each class with
  a count, whether it passes, and an example diff against the golden.
* Early stopping: a scenario stops sampling once its Wilson interval lies wholly above or below the
  gate's threshold (``--max-trials``): trials are spent where they decide something.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any


def wilson(passes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of ``passes / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = passes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k trials passes) from n trials with c passes."""
    if k > n or k < 1:
        raise ValueError(f"k={k} must be between 1 and n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(all k trials pass) (τ-bench's pass^k) from n trials with c passes."""
    if k > n or k < 1:
        raise ValueError(f"k={k} must be between 1 and n={n}")
    return math.comb(c, k) / math.comb(n, k)


def early_decision(passes: int, n: int, threshold: float, z: float = 1.96) -> str | None:
    """``above`` / ``below`` once the interval excludes ``threshold``, else None (keep sampling)."""
    low, high = wilson(passes, n, z)
    if low > threshold:
        return "above"
    if high < threshold:
        return "below"
    return None


def class_key(run: Any) -> str:
    """What a trial did, as the golden's matcher sees it (two trials in one class are equivalent to it)."""
    from opsfabric.agents.matching import ExactRule, IgnoreRule, canonical_json, match_value
    from opsfabric.agents.trace import trajectory

    expect = run.scenario.expectations(run.result.trace["attributes"]["gen_ai.request.model"]) if run.result.trace else run.scenario.expect
    rules: dict[str, dict[str, Any]] = {}
    for call in expect.trajectory.calls:
        rules.setdefault(call.tool, {}).update(call.match)
    parts = [run.outcome]
    for call in trajectory(run.result.trace) if run.result.trace else []:
        args = {}
        for key, value in sorted(call.args.items()):
            rule = rules.get(call.name, {}).get(key, ExactRule())
            if isinstance(rule, IgnoreRule):
                continue
            if isinstance(rule, ExactRule):
                args[key] = value
            else:  # regex, mentions, numeric, normalise: the class is whether it matches
                args[key] = "<matches>" if match_value(rule, next((c.args.get(key) for c in expect.trajectory.calls
                                                                   if c.tool == call.name), None), value) is None else "<differs>"
        parts.append(f"{call.name}({canonical_json(args)})[{call.outcome}]")
    return " -> ".join(parts)


@dataclass
class TrajectoryClass:
    key: str
    count: int
    passed: bool
    example_diff: str
    seeds: list[int | None] = field(default_factory=list)


@dataclass
class ScenarioTrials:
    """The K trials of one scenario."""

    scenario: str
    passes: int
    trials: int
    planned: int
    classes: list[TrajectoryClass]
    seconds: list[float]
    costs: list[float]
    tokens: list[int]
    stopped_early: str | None = None
    runs: list[Any] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.passes / self.trials if self.trials else 0.0

    @property
    def flaky(self) -> bool:
        return 0 < self.passes < self.trials

    def stats(self, k: int | None = None) -> dict[str, float]:
        k = min(k or self.trials, self.trials)
        low, high = wilson(self.passes, self.trials)
        return {"passes": self.passes, "trials": self.trials, "pass_rate": self.rate, f"pass@{k}": pass_at_k(self.trials, self.passes, k),
                f"pass^{k}": pass_hat_k(self.trials, self.passes, k), "wilson_low": low, "wilson_high": high}


def summarise_trials(scenario: str, runs: list[Any], seeds: list[int | None], planned: int, stopped_early: str | None = None) -> ScenarioTrials:
    """Group the trials of one scenario into classes and collect their costs."""
    classes: dict[str, TrajectoryClass] = {}
    for run, seed in zip(runs, seeds):
        key = class_key(run)
        if key not in classes:
            classes[key] = TrajectoryClass(key, 0, run.verdict.passed, run.verdict.render_diff())
        classes[key].count += 1
        classes[key].seeds.append(seed)
    tokens = [(r.result.trace or {}).get("totals", {}).get("gen_ai.usage.input_tokens", 0)
              + (r.result.trace or {}).get("totals", {}).get("gen_ai.usage.output_tokens", 0) for r in runs]
    return ScenarioTrials(scenario, sum(r.verdict.passed for r in runs), len(runs), planned,
                          sorted(classes.values(), key=lambda c: (-c.count, c.key)), [r.seconds for r in runs],
                          [r.cost_usd for r in runs], tokens, stopped_early, runs)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def suite_figures(results: list[ScenarioTrials], k: int) -> dict[str, float]:
    """Suite-level figures: mean pass^k, flaky count, latency and cost per scenario trial, tokens, trials saved."""
    per_trial_seconds = [s for r in results for s in r.seconds]
    per_trial_cost = [c for r in results for c in r.costs]
    ks = [min(k, r.trials) for r in results]
    return {
        "scenarios": float(len(results)),
        "trials": float(sum(r.trials for r in results)),
        "trials_planned": float(sum(r.planned for r in results)),
        "trials_saved": float(sum(r.planned - r.trials for r in results)),
        "mean_pass_rate": statistics.fmean(r.rate for r in results) if results else 0.0,
        f"mean_pass^{k}": statistics.fmean(pass_hat_k(r.trials, r.passes, kk) for r, kk in zip(results, ks)) if results else 0.0,
        "flaky": float(sum(r.flaky for r in results)),
        "latency_s_median": statistics.median(per_trial_seconds) if per_trial_seconds else float("nan"),
        "latency_s_p90": percentile(per_trial_seconds, 0.9),
        "cost_usd_median": statistics.median(per_trial_cost) if per_trial_cost else float("nan"),
        "cost_usd_p90": percentile(per_trial_cost, 0.9),
        "tokens_total": float(sum(t for r in results for t in r.tokens)),
    }
