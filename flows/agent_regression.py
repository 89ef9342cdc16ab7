"""Golden-trace regression of the ops agent: ``python -m flows.agent_regression [run|record ID|approve ID]``.

* ``run [--trials K] [--seed S] [--max-trials M]`` (default): every scenario of
  ``agents.golden_dir`` K times with seeds S..S+K-1 (one run for the deterministic offline
  planner); per scenario passes/K, pass@k, pass^k, a Wilson interval and the trajectory classes
  seen; the suite's mean pass^k, flaky count, latency and cost. The gate compares the pass counts
  with the baseline of the same configuration identity (model, digest, prompt, tool descriptions,
  temperature) by a one-sided exact test (``agents.regression``); quarantined scenarios are
  reported but do not fail it until their expiry. Results go to MLflow and Prefect artifacts; only
  a run that passes the gate becomes the next baseline. ``--max-trials`` samples adaptively.
* ``record ID``: replay one scenario and write what the agent did as ``ID.candidate.yaml`` beside
  the golden (refused if a candidate is already waiting: nothing is overwritten silently).
* ``approve ID``: replace the golden with its reviewed candidate.
"""

from __future__ import annotations

from prefect import flow

from flows.runners import flow_settings
from tasks.agents import gate_on_regressions, publish_results, regression_folder, replay_suite


@flow(name="agent-regression", log_prints=True)
def agent_regression_flow(config_files: list[str] | None = None, trials: int | None = None, seed: int | None = None,
                          max_trials: int | None = None) -> dict:
    """Run the golden suite K times per scenario, publish the results, fail on a statistically shown regression.

    Args:
        config_files: extra YAML overlays of the configuration (e.g. ``configs/profiles/local-llm.yaml``).
        trials: trials per scenario (K); empty: ``agents.regression.trials``. The offline planner always runs once.
        seed: first seed (trial i uses seed + i); empty: ``agents.regression.seed``.
        max_trials: adaptive sampling up to this many trials per scenario; empty: ``agents.regression.max_trials``.
    """
    from opsfabric.agents import regression

    settings = flow_settings(config_files)
    r = settings.agents.regression
    trials, seed = trials or r.trials, r.seed if seed is None else seed
    max_trials = max_trials or r.max_trials
    identity = regression.suite_identity(settings.agents)
    baseline = regression.load_baseline(regression.baseline_path(regression_folder(settings), identity))
    report = replay_suite(settings, trials, seed, max_trials, baseline)
    quarantine = regression.load_quarantine(settings.path(r.quarantine_file), set(report.statuses))
    decision = regression.decide(report.counts, baseline, regression.gate_policy(settings.agents), quarantine=quarantine)
    print(regression.render_trials(report))
    run_id = publish_results(settings, report, decision)
    gate_on_regressions(settings, report, decision, identity)
    return {"pass_rate": report.pass_rate, "verdicts": report.statuses, "mlflow_run_id": run_id, "k": report.k,
            "counts": report.counts, "gate": decision.reasons, "metrics": {k: v for k, v in report.metrics.items() if "." not in k}}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m flows.agent_regression", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the suite as a Prefect flow")
    run.add_argument("--trials", type=int, default=None, help="trials per scenario, K (default agents.regression.trials)")
    run.add_argument("--seed", type=int, default=None, help="first seed; trial i uses seed + i (default agents.regression.seed)")
    run.add_argument("--max-trials", type=int, default=None, help="adaptive sampling: up to this many trials, stopping a scenario once decided")
    for name in ("record", "approve"):
        p = sub.add_parser(name, help=f"{name} the golden of one scenario")
        p.add_argument("scenario", help="scenario id (file name without .yaml)")
        if name == "approve":
            p.add_argument("--sha", default=None, help="the candidate's sha that `record` printed: refuse a candidate changed since")
    args = parser.parse_args(argv)
    if args.command in (None, "run"):
        result = agent_regression_flow(trials=getattr(args, "trials", None), seed=getattr(args, "seed", None),
                                       max_trials=getattr(args, "max_trials", None))
        print(f"pass rate {result['pass_rate']:.3f} of scenarios pass every trial ({len(result['verdicts'])} scenarios, K={result['k']}), "
              f"MLflow run {result['mlflow_run_id']}")
        return 0

    from opsfabric.agents.errors import GoldenError
    from opsfabric.agents.golden import (approve_candidate, candidate_digest, golden_from_run, load_scenario, record_candidate,
                                         run_scenario)
    from opsfabric.settings import load_settings

    settings = load_settings()
    path = settings.path(settings.agents.golden_dir) / f"{args.scenario}.yaml"
    if not path.exists():
        raise GoldenError(f"no scenario {args.scenario!r} ({path} does not exist)")
    if args.command == "approve":
        print(f"approved {approve_candidate(path, args.sha)}")
        return 0
    scenario = load_scenario(path)
    with tempfile.TemporaryDirectory(prefix="agent-record-") as tmp:
        run = run_scenario(scenario, settings.agents, Path(tmp))
    candidate = record_candidate(path, golden_from_run(scenario, run))
    print(f"recorded {candidate} (verdict of the current golden: {run.verdict.status})")
    print(run.verdict.render_diff())
    print(f"review it, then: python -m flows.agent_regression approve {args.scenario} --sha {candidate_digest(path)}")
    return 0


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
