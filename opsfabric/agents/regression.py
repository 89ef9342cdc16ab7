"""The golden-trace regression suite as plain functions: summarise, compare with the last run, log.

``flows/agent_regression.py`` wires these; the gate is :func:`check_regressions`: a scenario that
passed in the baseline and does not pass now, or a scenario absent from the baseline (a new one, or
every one on the first run) that does not pass, fails the run, naming it and what changed. The
baseline is saved only when the gate passes, so a regression keeps failing until it is fixed or
its golden is re-approved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsfabric.agents.errors import AgentError
from opsfabric.agents.golden import ScenarioRun, regressions

EXPERIMENT = "agent-regression"


class RegressionError(AgentError):
    """Scenarios that passed in the previous run fail now."""


@dataclass
class SuiteReport:
    """What one replay of the suite found."""

    rows: list[dict[str, Any]]
    statuses: dict[str, str]
    diffs: dict[str, str]
    traces: dict[str, dict[str, Any]]
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return sum(s == "pass" for s in self.statuses.values()) / len(self.statuses) if self.statuses else 0.0


def summarise_runs(runs: list[ScenarioRun]) -> SuiteReport:
    """Rows for a table artifact, verdicts, diffs and traces, and the metrics to log."""
    rows, statuses, diffs, traces = [], {}, {}, {}
    for run in runs:
        sid, v = run.scenario.id, run.verdict
        statuses[sid] = v.status
        diffs[sid] = v.render_diff()
        if run.result.trace is not None:
            traces[sid] = run.result.trace
        rows.append({
            "scenario": sid,
            "verdict": v.status,
            "f1": round(v.score.f1, 3),
            "precision": round(v.score.precision, 3),
            "recall": round(v.score.recall, 3),
            "run status": run.result.status,
            "stop reason": run.result.stop_reason or "",
            "latency s": round(run.seconds, 3),
            "cost usd": round(run.cost_usd, 6),
            "first divergence": "" if v.first_divergence is None else v.first_divergence.render().strip(),
            "why": "; ".join([*v.reasons, *v.drift])[:300],
        })
    seconds = sum(r.seconds for r in runs)
    report = SuiteReport(rows, statuses, diffs, traces, seconds)
    report.metrics = {
        "pass_rate": round(report.pass_rate, 6),
        "scenarios": float(len(runs)),
        "failed": float(sum(s == "fail" for s in statuses.values())),
        "schema_drift": float(sum(s == "schema_drift" for s in statuses.values())),
        "mean_f1": round(sum(r.verdict.score.f1 for r in runs) / len(runs), 6) if runs else 0.0,
        "suite_seconds": round(seconds, 3),
        "total_cost_usd": round(sum(r.cost_usd for r in runs), 6),
        **{f"latency_s.{r.scenario.id}": round(r.seconds, 4) for r in runs},
        **{f"cost_usd.{r.scenario.id}": round(r.cost_usd, 6) for r in runs},
    }
    return report


def load_previous_verdicts(path: Path) -> dict[str, str]:
    """Verdicts of the previous run (empty before the first run)."""
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text())["verdicts"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AgentError(f"{path}: unreadable previous verdicts ({exc})", hint="delete the file to start a new baseline") from None


def save_verdicts(path: Path, report: SuiteReport) -> Path:
    from opsfabric.files import write_atomic

    # a kill mid-write leaves the old baseline, never half a file
    return write_atomic(path, json.dumps({"verdicts": report.statuses, "pass_rate": report.pass_rate}, indent=2, sort_keys=True))


def new_failures(previous: dict[str, str], current: dict[str, str]) -> list[str]:
    """Scenarios absent from the baseline (new ones; all of them without a baseline) that do not pass."""
    return sorted(s for s, status in current.items() if s not in previous and status != "pass")


def check_regressions(previous: dict[str, str], report: SuiteReport) -> None:
    """Raise :class:`RegressionError` naming every scenario that passed in the baseline and does not now,
    and every scenario absent from the baseline that does not pass (no free pass for new scenarios)."""
    lost = regressions(previous, report.statuses)
    new = new_failures(previous, report.statuses)
    if lost or new:
        parts = []
        if lost:
            parts.append(f"{len(lost)} scenario(s) passed in the baseline and fail now: {', '.join(lost)}")
        if new:
            parts.append(f"{len(new)} scenario(s) without a baseline verdict do not pass: {', '.join(new)}")
        details = "\n".join(f"--- {sid}\n{report.diffs[sid]}" for sid in [*lost, *new])
        raise RegressionError("; ".join(parts) + f"\n{details}",
                              hint="fix the agent, or if the change is intended: python -m flows.agent_regression record <id>, review, approve <id>")


def suite_markdown(report: SuiteReport, previous: dict[str, str]) -> str:
    """A short markdown summary (pass rate, regressions, failures with their first divergence)."""
    lost = regressions(previous, report.statuses)
    lines = [f"# Agent golden-trace regression: {report.pass_rate:.1%} pass ({len(report.statuses)} scenarios, {report.seconds:.1f} s)", ""]
    if lost:
        lines += [f"**Regressions (passed in the baseline):** {', '.join(lost)}", ""]
    new = new_failures(previous, report.statuses)
    if new:
        lines += [f"**Failing without a baseline verdict:** {', '.join(new)}", ""]
    for row in report.rows:
        if row["verdict"] != "pass":
            lines += [f"## {row['scenario']}: {row['verdict']}", "", "```", report.diffs[row["scenario"]], "```", ""]
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
