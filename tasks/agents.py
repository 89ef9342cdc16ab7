"""Agent tasks: replay the golden suite, publish its results, gate on regressions; approval pauses and trace publishing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from prefect.runtime import flow_run

from opsfabric.agents import regression
from opsfabric.agents.golden import suite_digest
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage, git_commit


def regression_folder(settings: Settings) -> Path:
    return settings.state_dir / "agents" / "regression"


@task(name="replay-golden-suite", cache_policy=NO_CACHE)
def replay_suite(settings: Settings, trials: int, seed: int, max_trials: int | None,
                 baseline: dict[str, tuple[int, int]]) -> regression.SuiteReport:
    """Run every scenario of ``agents.golden_dir`` ``trials`` times (seeds ``seed..``) against the replay fixture."""
    import tempfile

    from opsfabric.agents.golden import load_scenario, run_trials, scenario_files

    config = settings.agents
    policy = regression.gate_policy(config)
    limits = regression.thresholds(baseline, policy)
    results = []
    with tempfile.TemporaryDirectory(prefix="agent-suite-") as tmp:
        for path in scenario_files(settings.path(config.golden_dir)):
            scenario = load_scenario(path)
            results.append(run_trials(scenario, config, Path(tmp) / scenario.id, trials=trials, seed=seed, max_trials=max_trials,
                                      threshold=limits.get(scenario.id, policy.new_floor)))
    report = regression.summarise_trial_results(results, k=trials)
    get_run_logger().info("agent suite: %d scenarios, K=%d, %.3f pass every trial, %d flaky, %.1f s", len(results), trials,
                          report.pass_rate, int(report.metrics["flaky"]), report.seconds)
    return report


@task(name="publish-suite-results", cache_policy=NO_CACHE)
def publish_results(settings: Settings, report: regression.SuiteReport, decision: Any) -> str:
    """MLflow run (metrics, verdicts, diffs, traces), Prefect table and markdown artifacts; returns the MLflow run id."""
    golden = settings.path(settings.agents.golden_dir)
    lineage = Lineage(git_commit=git_commit(), flow_run_id=flow_run.get_id(),
                      flow_run_url=flow_run.get_flow_run_ui_url(), data_md5={"agent_golden": suite_digest(golden)})
    run_id = regression.log_suite(settings, report, lineage)
    create_table_artifact(report.rows, key="agent-regression", description=f"Golden-trace verdicts per scenario, K={report.k} (MLflow run {run_id})")
    create_table_artifact(decision.table(), key="agent-regression-gate", description="The statistical gate per scenario: counts, baseline, p-value")
    create_markdown_artifact(regression.suite_markdown(report, decision), key="agent-regression-summary",
                             description="Pass rates, gate reasons and first divergences")
    return run_id


@task(name="gate-on-regressions", cache_policy=NO_CACHE)
def gate_on_regressions(settings: Settings, report: regression.SuiteReport, decision: Any, identity: dict[str, Any],
                        baseline: dict[str, tuple[int, int]]) -> None:
    """Fail on a regression or a new scenario below its floor; only a run that passes the gate updates the baseline
    (of this configuration identity, and only upwards), so a regression keeps failing until fixed or re-approved."""
    for note in decision.notes:
        get_run_logger().warning("regression gate: %s", note)
    regression.check_gate(decision, report)
    regression.save_baseline(regression.baseline_path(regression_folder(settings), identity), identity, report, baseline)


# ---- the agent as a flow: approvals through Prefect's pause/resume form -----------------------------

class ApprovalInput(RunInput):
    """The resume form an operator fills in the Prefect UI for a pending risky action."""

    decision: Literal["approve", "deny", "edit"] = "deny"
    reason: str = ""
    edited_args_json: str = ""

    def to_decision(self, tool: str) -> dict[str, Any]:
        """The HumanInTheLoopMiddleware decision this form stands for."""
        import json

        from opsfabric.agents.errors import ToolArgumentError

        if self.decision == "approve":
            return {"type": "approve"}
        if self.decision == "deny":
            return {"type": "reject", "message": self.reason or "denied in the Prefect UI"}
        try:
            args = json.loads(self.edited_args_json)
        except ValueError as exc:
            raise ToolArgumentError(f"edited_args_json is not valid JSON: {exc}", hint='e.g. {"batch": "batch_03"}') from None
        return {"type": "edit", "edited_action": {"name": tool, "args": args}}


def wait_for_approval(pending: Any, thread_id: str, timeout_seconds: int, *, attempt: int = 1,
                      previous_error: str | None = None) -> ApprovalInput:
    """Pause the flow run until an operator answers the pending action in the UI's resume form.

    ``attempt`` numbers the pauses of one action: a form answer that was refused (bad JSON, arguments
    the tool's schema refuses) pauses again with ``previous_error`` shown in the form's description.
    Prefect refuses to pause twice with one key, so each attempt has its own.
    """
    import json

    from prefect.flow_runs import pause_flow_run

    from opsfabric.agents.trace import redact, redact_text

    description = (f"**{pending.tool}** `{json.dumps(redact(pending.args), sort_keys=True)}` is waiting for approval (agent thread `{thread_id}`, "
                   f"action `{pending.interrupt_id}`).\n\n"
                   "decision: approve, deny (give a reason) or edit (edited_args_json, a JSON object).")
    if previous_error:
        description = f"**Your previous answer was refused:** {redact_text(previous_error)}\n\n" + description
    answer = pause_flow_run(wait_for_input=ApprovalInput.with_initial_data(description=description),
                            timeout=timeout_seconds, poll_interval=2, key=f"approval-{pending.interrupt_id}-{attempt}")
    get_run_logger().info("approval for %s on thread %s: %s", pending.tool, thread_id, answer.decision)
    return answer


@task(name="publish-agent-trace", cache_policy=NO_CACHE)
def publish_trace(settings: Settings, trace: dict[str, Any]) -> str:
    """Write the trace JSON, send it to MLflow tracing, and show its timeline as a Prefect artifact."""
    from opsfabric.agents.trace import render_timeline, write_trace
    from opsfabric.agents.tracing import send_to_mlflow
    from opsfabric.tracking import experiment_id, mlflow_client

    path = write_trace(trace, settings.state_dir / "agents" / "traces")
    send_to_mlflow(trace, mlflow_client(settings), experiment_id(settings, "agent-runs"),
                   tags={"prefect.flow_run_id": str(flow_run.get_id() or "")})
    create_markdown_artifact(render_timeline(trace), key="agent-trace", description=f"Agent run timeline ({trace['status']})")
    return str(path)


# ---- two configurations side by side ---------------------------------------------------------------

@task(name="compare-agent-configs", cache_policy=NO_CACHE)
def compare_configs(settings_a: Settings, settings_b: Settings, trials: int, seed: int) -> Any:
    """Every scenario of A's golden folder under both configurations, paired by seed, alternating which side runs first."""
    import tempfile

    from opsfabric.agents.compare import Comparison, pair, run_side
    from opsfabric.agents.golden import load_scenario, scenario_files
    from opsfabric.agents.regression import suite_identity

    paired, cost = [], {"a": 0.0, "b": 0.0}
    with tempfile.TemporaryDirectory(prefix="agent-compare-") as tmp:
        for i, path in enumerate(scenario_files(settings_a.path(settings_a.agents.golden_dir))):
            scenario = load_scenario(path)
            sides = [("a", settings_a), ("b", settings_b)] if i % 2 == 0 else [("b", settings_b), ("a", settings_a)]
            runs = {}
            for name, settings in sides:
                runs[name] = run_side(scenario, settings.agents, Path(tmp) / name / scenario.id, trials, seed)
                cost[name] += sum(r.cost_usd for r in runs[name])
            paired.append(pair(scenario.id, runs["a"], runs["b"]))
    comparison = Comparison(paired, trials, seed, suite_identity(settings_a.agents), suite_identity(settings_b.agents), cost["a"], cost["b"])
    get_run_logger().info("compared %d scenarios, K=%d: A %.3f, B %.3f, McNemar p=%.4f", len(paired), trials,
                          comparison.rate("a"), comparison.rate("b"), comparison.suite_p_value)
    return comparison


@task(name="publish-comparison", cache_policy=NO_CACHE)
def publish_comparison(settings: Settings, comparison: Any, name_a: str, name_b: str) -> str:
    """One MLflow parent run with a child per side, and a Prefect table artifact; returns the parent run id."""
    import json

    from opsfabric.tracking import mlflow_run

    lineage = Lineage(git_commit=git_commit(), flow_run_id=flow_run.get_id(), flow_run_url=flow_run.get_flow_run_ui_url(),
                      data_md5={"agent_golden": suite_digest(settings.path(settings.agents.golden_dir))})
    diff, low, high = comparison.effect()
    with mlflow_run(settings, "agent-compare", f"{name_a} vs {name_b}", lineage) as parent:
        for key, value in {"effect_b_minus_a": diff, "effect_ci_low": low, "effect_ci_high": high, "mcnemar_p": comparison.suite_p_value,
                           "a_only_pairs": comparison.a_only, "b_only_pairs": comparison.b_only, "trials": comparison.trials}.items():
            parent.client.log_metric(parent.run_id, key, float(value))
        parent.client.log_text(parent.run_id, json.dumps(comparison.table(), indent=2), "comparison.json")
        parent.client.log_text(parent.run_id, comparison.render(name_a, name_b), "comparison.txt")
        for side, name, labels in (("a", name_a, comparison.labels_a), ("b", name_b, comparison.labels_b)):
            tags = {"mlflow.parentRunId": parent.run_id, "opsfabric.compare.side": side, **{k: str(v) for k, v in labels.items()}}
            with mlflow_run(settings, "agent-compare", f"{side}: {name}", lineage, tags=tags) as child:
                child.client.log_metric(child.run_id, "pass_rate", comparison.rate(side))
                child.client.log_metric(child.run_id, "cost_per_passing_trial_usd", comparison.cost_per_pass(side))
        create_table_artifact(comparison.table(), key="agent-compare",
                              description=f"A = {name_a}, B = {name_b}: paired trials per scenario, exact McNemar p (MLflow run {parent.run_id})")
        return parent.run_id
