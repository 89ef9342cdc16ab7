"""The golden-trace regression suite as plain functions: trials, summaries, baselines per identity, the gate, logging.

``flows/agent_regression.py`` wires these. Each scenario runs ``K`` times (one run for the
deterministic offline planner); its passes, pass@k, pass^k, Wilson interval and trajectory classes
are summarised (:mod:`opsfabric.agents.trials`); the gate (:mod:`opsfabric.agents.regression_gate`)
compares the pass counts with the baseline **of the same configuration identity** (model, digest,
prompt, tool descriptions, temperature) under a one-sided exact test, and names the test, the
counts and the p-value of every scenario it fails. The baseline is saved only when the gate passes,
so a regression keeps failing until it is fixed or its golden is re-approved.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from opsfabric.agents.errors import AgentError, GoldenError
from opsfabric.agents.golden import ScenarioRun
from opsfabric.agents.regression_gate import GateDecision, GatePolicy, Quarantine, decide, identity_key, identity_of  # noqa: F401 (decide: the flow's gate)
from opsfabric.agents.trials import ScenarioTrials, percentile, suite_figures, summarise_trials

EXPERIMENT = "agent-regression"


class RegressionError(AgentError):
    """The gate found a regression (or a new scenario below its floor)."""


@dataclass
class SuiteReport:
    """What one run of the suite found."""

    rows: list[dict[str, Any]]
    statuses: dict[str, str]  # pass (every trial) | fail (none) | flaky (some) | schema_drift
    diffs: dict[str, str]
    traces: dict[str, dict[str, Any]]
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    trials: list[ScenarioTrials] = field(default_factory=list)
    k: int = 1

    @property
    def pass_rate(self) -> float:
        """Share of scenarios whose every trial passed (with K=1: the share that passed)."""
        return sum(s == "pass" for s in self.statuses.values()) / len(self.statuses) if self.statuses else 0.0

    @property
    def counts(self) -> dict[str, tuple[int, int]]:
        return {t.scenario: (t.passes, t.trials) for t in self.trials}


def summarise_runs(runs: list[ScenarioRun]) -> SuiteReport:
    """A report of one run per scenario (``K = 1``)."""
    return summarise_trial_results([summarise_trials(r.scenario.id, [r], [None], 1) for r in runs], k=1)


def _status(t: ScenarioTrials) -> str:
    if any(r.verdict.status == "schema_drift" for r in t.runs):
        return "schema_drift"
    return "pass" if t.passes == t.trials else ("fail" if t.passes == 0 else "flaky")


def summarise_trial_results(results: list[ScenarioTrials], k: int) -> SuiteReport:
    """Rows for a table artifact, statuses, diffs (the first failing trial's, else the first's), traces and metrics."""
    rows, statuses, diffs, traces = [], {}, {}, {}
    for t in results:
        statuses[t.scenario] = _status(t)
        shown = next((r for r in t.runs if not r.verdict.passed), t.runs[0])
        diffs[t.scenario] = shown.verdict.render_diff()
        if shown.result.trace is not None:
            traces[t.scenario] = shown.result.trace
        st = t.stats(k)
        kk = min(k, t.trials)
        v = shown.verdict
        rows.append({
            "scenario": t.scenario,
            "verdict": statuses[t.scenario],
            "passes": f"{t.passes}/{t.trials}",
            f"pass@{kk}": round(st[f"pass@{kk}"], 3),
            f"pass^{kk}": round(st[f"pass^{kk}"], 3),
            "wilson 95%": f"{st['wilson_low']:.2f}-{st['wilson_high']:.2f}",
            "classes": len(t.classes),
            "f1": round(v.score.f1, 3),
            "run status": shown.result.status,
            "stop reason": shown.result.stop_reason or "",
            "latency s (median)": round(statistics.median(t.seconds), 3),
            "cost usd (median)": round(statistics.median(t.costs), 6),
            "first divergence": "" if v.first_divergence is None else v.first_divergence.render().strip(),
            "why": "; ".join([*v.reasons, *v.drift])[:300],
        })
    seconds = sum(s for t in results for s in t.seconds)
    report = SuiteReport(rows, statuses, diffs, traces, seconds, trials=results, k=k)
    figures = suite_figures(results, k)
    report.metrics = {
        "pass_rate": round(report.pass_rate, 6),
        "failed": float(sum(s == "fail" for s in statuses.values())),
        "schema_drift": float(sum(s == "schema_drift" for s in statuses.values())),
        "mean_f1": round(statistics.fmean(r.verdict.score.f1 for t in results for r in t.runs), 6) if results else 0.0,
        "suite_seconds": round(seconds, 3),
        "total_cost_usd": round(sum(c for t in results for c in t.costs), 6),
        "k": float(k),
        **{name.replace("^", "_hat_"): round(value, 6) for name, value in figures.items()},
        **{f"latency_s.{t.scenario}": round(statistics.median(t.seconds), 4) for t in results},
        **{f"cost_usd.{t.scenario}": round(statistics.median(t.costs), 6) for t in results},
        **{f"pass_rate.{t.scenario}": round(t.rate, 6) for t in results},
    }
    return report


def render_trials(report: SuiteReport, *, classes: bool = True) -> str:
    """The per-scenario table a terminal shows: passes/K, pass@k, pass^k, Wilson interval, and the classes seen."""
    k = report.k
    lines = [f"{'scenario':34} {'passes':>7} {'pass@k':>7} {'pass^k':>7} {'wilson 95%':>11}  classes"]
    for t in report.trials:
        st, kk = t.stats(k), min(k, t.trials)
        early = f" (stopped early: {t.stopped_early}, {t.planned - t.trials} trials saved)" if t.stopped_early else ""
        lines.append(f"{t.scenario:34} {t.passes:>3}/{t.trials:<3} {st[f'pass@{kk}']:>7.3f} {st[f'pass^{kk}']:>7.3f} "
                     f"{st['wilson_low']:>5.2f}-{st['wilson_high']:<5.2f}  {len(t.classes)}{' FLAKY' if t.flaky else ''}{early}")
        if classes and (len(t.classes) > 1 or t.passes < t.trials):
            for c in t.classes:
                lines.append(f"    {c.count}x {'pass' if c.passed else 'FAIL'}  {c.key[:150]}")
    m = report.metrics
    lines.append(f"suite: {int(m['scenarios'])} scenarios, K={k}, {int(m['trials'])} trials ({int(m['trials_saved'])} saved by early "
                 f"stopping), mean pass^{k} {m[f'mean_pass_hat_{k}']:.3f}, mean pass rate {m['mean_pass_rate']:.3f}, flaky {int(m['flaky'])}, "
                 f"latency per trial median {m['latency_s_median']:.2f} s / p90 {m['latency_s_p90']:.2f} s, "
                 f"cost per trial median ${m['cost_usd_median']:.4f} / p90 ${m['cost_usd_p90']:.4f}, tokens {int(m['tokens_total'])}")
    return "\n".join(lines)


# ---- baselines per configuration identity ------------------------------------------------------
def suite_identity(config: Any) -> dict[str, Any]:
    """The identity of the configuration the suite judges (what a baseline is kept for)."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from opsfabric.agents.agent import make_model
    from opsfabric.agents.prompts import tools_digest
    from opsfabric.agents.tools import TOOL_SPECS, make_tools

    decision = make_model(config.model)
    unused = type("NoBackend", (), {spec.name: staticmethod(lambda **_: {}) for spec in TOOL_SPECS})()  # only the schemas are read
    tools = [convert_to_openai_tool(t)["function"] for t in make_tools(unused, TOOL_SPECS)]
    return identity_of({**decision.labels, "opsfabric.tools.sha256": tools_digest(tools)}, decision.name)


def baseline_path(folder: Path, identity: dict[str, Any]) -> Path:
    return folder / "baselines" / f"{identity_key(identity)}.json"


def load_baseline(path: Path) -> dict[str, tuple[int, int]]:
    """Per scenario (passes, trials) of the baseline at ``path`` (empty before the first passing run)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {sid: (int(v["passes"]), int(v["trials"])) for sid, v in data["scenarios"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise AgentError(f"{path}: unreadable regression baseline ({exc})", hint="delete the file to start a new baseline for this configuration") from None


def next_baseline(previous: dict[str, tuple[int, int]], report: SuiteReport) -> dict[str, tuple[int, int]]:
    """The baseline after a run that passed the gate: per scenario the better of the old and the new pass rate.

    It only rises: a string of small drops, each too small to be shown, must not walk the reference
    down (a lower one is accepted by re-approving the goldens or deleting the baseline, on purpose).
    """
    out = dict(previous)
    for sid, (c, n) in report.counts.items():
        old = previous.get(sid)
        if old is None or (n and c / n >= (old[0] / old[1] if old[1] else 0.0)):
            out[sid] = (c, n)
    return {sid: counts for sid, counts in out.items() if sid in report.counts}


def save_baseline(path: Path, identity: dict[str, Any], report: SuiteReport, previous: dict[str, tuple[int, int]] | None = None) -> Path:
    from opsfabric.files import write_atomic

    counts = next_baseline(previous or {}, report)
    body = {"identity": identity, "k": report.k, "pass_rate": report.pass_rate,
            "scenarios": {sid: {"passes": c, "trials": n} for sid, (c, n) in sorted(counts.items())}}
    return write_atomic(path, json.dumps(body, indent=2, sort_keys=True))  # a kill mid-write keeps the old baseline


def load_quarantine(path: Path, known: set[str]) -> dict[str, Quarantine]:
    """The reviewed quarantine entries; a bad entry is a named error (file, entry, field)."""
    import yaml

    if not path.exists():
        return {}
    try:
        entries = (yaml.safe_load(path.read_text()) or {}).get("quarantine") or []
    except yaml.YAMLError as exc:
        raise GoldenError(f"{path}: not valid YAML: {exc}") from None
    out = {}
    for i, e in enumerate(entries):
        missing = [k for k in ("scenario", "reason", "owner", "expires") if not isinstance(e, dict) or not e.get(k)]
        if missing:
            raise GoldenError(f"{path}: quarantine[{i}] lacks {missing}", hint="each entry needs scenario, reason, owner and expires (YYYY-MM-DD)")
        if e["scenario"] not in known:
            raise GoldenError(f"{path}: quarantine[{i}] names unknown scenario {e['scenario']!r}")
        expires = e["expires"] if isinstance(e["expires"], date) else None
        if expires is None:
            try:
                expires = date.fromisoformat(str(e["expires"]))
            except ValueError:
                raise GoldenError(f"{path}: quarantine[{i}].expires {e['expires']!r} is not a date (YYYY-MM-DD)") from None
        out[e["scenario"]] = Quarantine(e["scenario"], str(e["reason"]), str(e["owner"]), expires)
    return out


def gate_policy(config: Any) -> GatePolicy:
    from opsfabric.agents.golden import is_deterministic

    r = config.regression
    return GatePolicy(alpha=r.alpha, min_effect=r.min_effect, suite_min_effect=r.suite_min_effect, new_floor=r.new_floor,
                      correction=r.correction, deterministic=is_deterministic(config))


def thresholds(baseline: dict[str, tuple[int, int]], policy: GatePolicy) -> dict[str, float]:
    """Per scenario, the pass rate at which the gate's verdict flips (for early stopping).

    A scenario whose baseline is within ``min_effect`` of 0 cannot regress: its threshold is -1, so
    adaptive sampling stops it after the minimum number of trials (nothing to decide there).
    """
    return {sid: (c / n - policy.min_effect if c / n - policy.min_effect > 0 else -1.0) for sid, (c, n) in baseline.items() if n}


def check_gate(decision: GateDecision, report: SuiteReport) -> None:
    """Raise :class:`RegressionError` naming every scenario the gate failed, its test, counts and p-value, and its diff."""
    if decision.passed:
        return
    failing = [s.scenario for s in decision.scenarios if s.verdict in ("regressed", "below_floor")]
    details = "\n".join(f"--- {sid}\n{report.diffs[sid]}" for sid in failing)
    raise RegressionError("regression gate failed:\n" + "\n".join(f"  {r}" for r in decision.reasons) + f"\n{details}",
                          hint="fix the agent, or if the change is intended: python -m flows.agent_regression record <id>, review, approve <id>; "
                          "a known flaky scenario can be quarantined (agents.regression.quarantine_file) with an owner and an expiry")


def suite_markdown(report: SuiteReport, decision: GateDecision | None = None) -> str:
    """A short markdown summary (pass rate, gate reasons, failures with their first divergence)."""
    m = report.metrics
    lines = [f"# Agent golden-trace regression: {report.pass_rate:.1%} of scenarios pass every trial ({len(report.statuses)} scenarios, "
             f"K={report.k}, {report.seconds:.1f} s)", "",
             f"mean pass^{report.k} {m.get(f'mean_pass_hat_{report.k}', float('nan')):.3f}, flaky {int(m.get('flaky', 0))}", ""]
    if decision is not None and not decision.passed:
        lines += ["**Gate failed:**", "", *[f"- {r}" for r in decision.reasons], ""]
    for row in report.rows:
        if row["verdict"] != "pass":
            lines += [f"## {row['scenario']}: {row['verdict']} ({row['passes']})", "", "```", report.diffs[row["scenario"]], "```", ""]
    return "\n".join(lines)


def log_suite(settings: Any, report: SuiteReport, lineage: Any) -> str:
    """One MLflow run in experiment ``agent-regression``: metrics, verdicts, diffs and traces as artifacts,
    and each scenario's trace in MLflow tracing (tagged ``opsfabric.scenario``, linked to the run)."""
    from opsfabric.agents.trace import dumps_trace
    from opsfabric.agents.tracing import model_tags, send_to_mlflow
    from opsfabric.tracking import mlflow_run

    # the model the suite judged (GGUF file and sha256, server, temperature, seed, prompt): from its traces
    labels = model_tags(next(iter(report.traces.values()))) if report.traces else {}
    tags = {"opsfabric.agent.model": settings.agents.model.kind, **labels}
    with mlflow_run(settings, EXPERIMENT, "golden-suite", lineage, tags=tags) as run:
        for key, value in sorted(report.metrics.items()):
            run.client.log_metric(run.run_id, key, value)
        run.client.log_text(run.run_id, json.dumps(report.statuses, indent=2, sort_keys=True), "verdicts.json")
        run.client.log_text(run.run_id, json.dumps(report.rows, indent=2), "suite_table.json")
        for sid, diff in sorted(report.diffs.items()):
            run.client.log_text(run.run_id, diff, f"diffs/{sid}.txt")
        experiment_id = run.client.get_run(run.run_id).info.experiment_id
        for sid, trace in sorted(report.traces.items()):
            run.client.log_text(run.run_id, dumps_trace(trace), f"traces/{sid}.json")
            send_to_mlflow(trace, run.client, experiment_id, run_id=run.run_id, tags={"opsfabric.scenario": sid})
        return run.run_id
