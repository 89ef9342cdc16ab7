"""Two agent configurations side by side on the same scenarios and seeds: paired tests, an effect with its interval.

Trial ``i`` of a scenario runs with seed ``S + i`` on both sides, so trials are paired. Per
scenario: passes of each side, the discordant pairs (A passed and B failed, and the reverse) and an
exact McNemar test (two-sided binomial test on the discordant pairs; p = 1 without any). Suite: the
same test over every pair, and the difference in mean per-scenario pass rate (B - A) with a seeded
bootstrap 95% interval over scenarios (trials of one scenario are not independent, scenarios are
resampled whole). Cost per passing scenario-trial per side. Pure functions but for :func:`run_side`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOOTSTRAP = 5000


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (binomial, p = 0.5)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class PairedScenario:
    scenario: str
    passes_a: int
    passes_b: int
    trials: int
    a_only: int  # pairs where A passed and B did not
    b_only: int
    p_value: float
    change: str  # better | worse | same (B relative to A, by passes)
    first_divergence: str = ""


@dataclass
class Comparison:
    scenarios: list[PairedScenario]
    trials: int
    seed: int
    labels_a: dict[str, Any] = field(default_factory=dict)
    labels_b: dict[str, Any] = field(default_factory=dict)
    cost_a: float = 0.0
    cost_b: float = 0.0

    @property
    def a_only(self) -> int:
        return sum(s.a_only for s in self.scenarios)

    @property
    def b_only(self) -> int:
        return sum(s.b_only for s in self.scenarios)

    @property
    def suite_p_value(self) -> float:
        return mcnemar_exact(self.a_only, self.b_only)

    def rate(self, side: str) -> float:
        key = "passes_a" if side == "a" else "passes_b"
        return sum(getattr(s, key) for s in self.scenarios) / max(1, sum(s.trials for s in self.scenarios))

    def effect(self, seed: int = 0) -> tuple[float, float, float]:
        """Mean per-scenario pass rate of B minus A, and its bootstrap 95% interval (scenarios resampled)."""
        diffs = [(s.passes_b - s.passes_a) / s.trials for s in self.scenarios if s.trials]
        if not diffs:
            return 0.0, 0.0, 0.0
        rng = random.Random(seed)
        means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(BOOTSTRAP))
        return sum(diffs) / len(diffs), means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]

    def cost_per_pass(self, side: str) -> float:
        passes = sum(s.passes_a if side == "a" else s.passes_b for s in self.scenarios)
        cost = self.cost_a if side == "a" else self.cost_b
        return cost / passes if passes else float("nan")

    def table(self) -> list[dict[str, Any]]:
        return [{"scenario": s.scenario, "A passes": f"{s.passes_a}/{s.trials}", "B passes": f"{s.passes_b}/{s.trials}",
                 "A only": s.a_only, "B only": s.b_only, "McNemar p": round(s.p_value, 4), "B vs A": s.change,
                 "first divergence": s.first_divergence[:200]} for s in self.scenarios]

    def render(self, name_a: str, name_b: str) -> str:
        diff, low, high = self.effect()
        lines = [f"A = {name_a}: {_describe(self.labels_a)}", f"B = {name_b}: {_describe(self.labels_b)}",
                 f"{self.trials} paired trials per scenario (seeds {self.seed}..{self.seed + self.trials - 1}, the same on both sides)"]
        greedy = [side for side, labels in (("A", self.labels_a), ("B", self.labels_b))
                  if labels.get("gen_ai.request.temperature") == 0 or labels.get("model") == "offline-planner"]
        if greedy and self.trials > 1:
            lines.append(f"note: {' and '.join(greedy)} decide(s) greedily (temperature 0 or the offline planner): their trials repeat one "
                         "answer, so the paired tests count copies as evidence; compare sampled configurations, or read K=1")
        lines += ["",
                 f"{'scenario':34} {'A':>6} {'B':>6} {'A only':>6} {'B only':>6} {'McNemar p':>9}  B vs A"]
        for s in self.scenarios:
            lines.append(f"{s.scenario:34} {s.passes_a:>2}/{s.trials:<3} {s.passes_b:>2}/{s.trials:<3} {s.a_only:>6} {s.b_only:>6} "
                         f"{s.p_value:>9.4f}  {s.change}")
            if s.change != "same" and s.first_divergence:
                lines.append(f"    first divergence: {s.first_divergence[:160]}")
        lines += ["", f"suite: pass rate A {self.rate('a'):.3f}, B {self.rate('b'):.3f}; discordant pairs A-only {self.a_only}, "
                  f"B-only {self.b_only}, exact McNemar p={self.suite_p_value:.4f}",
                  f"effect (mean per-scenario pass rate, B - A): {diff:+.3f}, bootstrap 95% interval {low:+.3f} .. {high:+.3f} "
                  f"({BOOTSTRAP} resamples of scenarios)",
                  f"cost per passing trial: A ${self.cost_per_pass('a'):.5f}, B ${self.cost_per_pass('b'):.5f}"]
        return "\n".join(lines)


_SHOWN = {"model": "model", "opsfabric.model.sha256": "file sha256", "opsfabric.tool_calling": "tool calling", "opsfabric.prompt.sha256": "prompt",
          "opsfabric.prompt.few_shot": "few-shot", "gen_ai.request.temperature": "temperature", "opsfabric.tools.sha256": "tool descriptions",
          "opsfabric.planner.thresholds": "planner"}


def _describe(labels: dict[str, Any]) -> str:
    return ", ".join(f"{name} {str(labels[k])[:16]}" for k, name in _SHOWN.items() if k in labels)


def pair(scenario: str, runs_a: list[Any], runs_b: list[Any]) -> PairedScenario:
    """Pair the trials of one scenario by seed (the i-th trial of each side used the same seed)."""
    a = [r.verdict.passed for r in runs_a]
    b = [r.verdict.passed for r in runs_b]
    n = min(len(a), len(b))
    a_only = sum(1 for i in range(n) if a[i] and not b[i])
    b_only = sum(1 for i in range(n) if b[i] and not a[i])
    pa, pb = sum(a[:n]), sum(b[:n])
    change = "better" if pb > pa else ("worse" if pb < pa else "same")
    shown = next((r for r in (runs_b if change == "worse" else runs_a) if not r.verdict.passed), None)
    first = shown.verdict.first_divergence.render().strip() if shown is not None and shown.verdict.first_divergence else ""
    return PairedScenario(scenario, pa, pb, n, a_only, b_only, mcnemar_exact(a_only, b_only), change, first)


def run_side(scenario: Any, config: Any, workdir: Path, trials: int, seed: int) -> list[Any]:
    """``trials`` runs of one scenario under one configuration, seeds ``seed ..`` (one run for the offline planner, repeated)."""
    from opsfabric.agents.golden import is_deterministic, run_scenario

    if is_deterministic(config):
        run = run_scenario(scenario, config, workdir / "trial-0")
        return [run] * trials  # the same answer for every seed: its one run stands for all
    return [run_scenario(scenario, config, workdir / f"trial-{i}", seed=seed + i) for i in range(trials)]
