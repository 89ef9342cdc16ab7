"""Golden-trace regression of the ops agent: ``python -m flows.agent_regression [run|record ID|approve ID]``.

* ``run [--trials K] [--seed S] [--max-trials M]`` (default): every scenario of
  ``agents.golden_dir`` K times with seeds S..S+K-1 (one run for the deterministic offline
  planner); per scenario passes/K, pass@k, pass^k, a Wilson interval and the trajectory classes
  seen; the suite's mean pass^k, flaky count, latency and cost. The gate compares the pass counts
  with the baseline of the same configuration identity (model, digest, prompt, tool descriptions,
  temperature) by a one-sided exact test (``agents.regression``); quarantined scenarios are
  reported but do not fail it until their expiry. Results go to MLflow and Prefect artifacts; only
  a run that passes the gate becomes the next baseline. ``--max-trials`` samples adaptively.
* ``compare A.yaml[,A2.yaml] B.yaml[,B2.yaml] [--trials K] [--seed S]``: two configurations (model, prompt version,
  tool descriptions, temperature) on the same scenarios and seeds: per scenario an exact McNemar
  test on the paired trials, the suite's effect with a bootstrap interval, cost per passing trial;
  one MLflow parent run (experiment ``agent-compare``) with a child per side, a Prefect table.
* ``record ID [--trials K] [--class N]``: run one scenario (K times) and show the trajectory classes
  seen; with one class, or the reviewer's ``--class N``, write that class's run as
  ``ID.candidate.yaml`` beside the golden (never one unexamined sample of several; refused if a
  candidate is already waiting: nothing is overwritten silently).
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
    for note in decision.notes:
        print(f"note: {note}")
    gate_on_regressions(settings, report, decision, identity, baseline)
    return {"pass_rate": report.pass_rate, "verdicts": report.statuses, "mlflow_run_id": run_id, "k": report.k,
            "counts": report.counts, "gate": decision.reasons, "metrics": {k: v for k, v in report.metrics.items() if "." not in k}}


@flow(name="agent-compare", log_prints=True)
def agent_compare_flow(config_a: str, config_b: str, trials: int = 5, seed: int = 0, config_files: list[str] | None = None) -> dict:
    """Two agent configurations on the same scenarios and seeds: paired tests per scenario, the suite effect with its interval.

    Args:
        config_a: YAML overlay(s) of side A, comma-separated (model, prompt version, tool descriptions, temperature),
            e.g. configs/profiles/local-llm.yaml.
        config_b: YAML overlay(s) of side B, e.g. configs/profiles/local-llm.yaml,configs/profiles/local-llm-no-examples.yaml.
        trials: paired trials per scenario (trial i uses seed + i on both sides).
        seed: first seed.
        config_files: overlays applied under both sides.
    """
    from tasks.agents import compare_configs, publish_comparison

    base = list(config_files or [])
    settings_a = flow_settings([*base, *[f for f in config_a.split(",") if f.strip()]])
    settings_b = flow_settings([*base, *[f for f in config_b.split(",") if f.strip()]])
    comparison = compare_configs(settings_a, settings_b, trials, seed)
    print(comparison.render(config_a, config_b))
    run_id = publish_comparison(settings_a, comparison, config_a, config_b)
    diff, low, high = comparison.effect()
    return {"mlflow_run_id": run_id, "pass_rate_a": comparison.rate("a"), "pass_rate_b": comparison.rate("b"),
            "mcnemar_p": comparison.suite_p_value, "effect": diff, "effect_ci": [low, high], "table": comparison.table()}


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
    compare = sub.add_parser("compare", help="two configurations side by side on the same scenarios and seeds")
    compare.add_argument("config_a", help="YAML overlay(s) of side A, comma-separated")
    compare.add_argument("config_b", help="YAML overlay(s) of side B, comma-separated")
    compare.add_argument("--trials", type=int, default=5, help="paired trials per scenario")
    compare.add_argument("--seed", type=int, default=0, help="first seed (trial i uses seed + i on both sides)")
    for name in ("record", "approve"):
        p = sub.add_parser(name, help=f"{name} the golden of one scenario")
        p.add_argument("scenario", help="scenario id (file name without .yaml)")
        if name == "approve":
            p.add_argument("--sha", default=None, help="the candidate's sha that `record` printed: refuse a candidate changed since")
        else:
            p.add_argument("--trials", type=int, default=1, help="run K trials and show the trajectory classes seen")
            p.add_argument("--seed", type=int, default=0, help="first seed of the trials")
            p.add_argument("--class", dest="chosen", type=int, default=None,
                           help="with several classes: the number of the class to record as the golden (after reviewing them)")
    args = parser.parse_args(argv)
    if args.command in (None, "run"):
        result = agent_regression_flow(trials=getattr(args, "trials", None), seed=getattr(args, "seed", None),
                                       max_trials=getattr(args, "max_trials", None))
        print(f"pass rate {result['pass_rate']:.3f} of scenarios pass every trial ({len(result['verdicts'])} scenarios, K={result['k']}), "
              f"MLflow run {result['mlflow_run_id']}")
        return 0

    if args.command == "compare":
        result = agent_compare_flow(args.config_a, args.config_b, trials=args.trials, seed=args.seed)
        print(f"MLflow run {result['mlflow_run_id']}")
        return 0

    from opsfabric.agents.errors import GoldenError
    from opsfabric.agents.golden import approve_candidate, candidate_digest, golden_from_run, load_scenario, record_candidate, run_trials
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
        trials = run_trials(scenario, settings.agents, Path(tmp), trials=args.trials, seed=args.seed)
    classes = trials.classes
    print(f"{scenario.id}: {trials.passes}/{trials.trials} trials pass the current golden; {len(classes)} trajectory class(es):")
    for number, c in enumerate(classes, start=1):
        print(f"  [{number}] {c.count}x {'passes' if c.passed else 'fails'} the current golden (seeds {c.seeds}): {c.key}")
    if args.chosen is None and len(classes) > 1:
        print("\n".join(f"--- class [{n}]\n{c.example_diff}" for n, c in enumerate(classes, start=1)))
        raise GoldenError(f"{len(classes)} trajectory classes: nothing recorded", hint=f"review them, then record one: python -m flows.agent_regression "
                          f"record {args.scenario} --trials {args.trials} --seed {args.seed} --class N")
    chosen = classes[(args.chosen or 1) - 1] if 0 < (args.chosen or 1) <= len(classes) else None
    if chosen is None:
        raise GoldenError(f"--class {args.chosen}: there are {len(classes)} classes", hint="pick one of the numbers printed above")
    from opsfabric.agents.trials import class_key

    run = next(r for r in trials.runs if class_key(r) == chosen.key)
    candidate = record_candidate(path, golden_from_run(scenario, run))
    print(f"recorded {candidate} from class [{classes.index(chosen) + 1}] ({chosen.count} of {trials.trials} trials)")
    print(run.verdict.render_diff())
    print(f"review it, then: python -m flows.agent_regression approve {args.scenario} --sha {candidate_digest(path)}")
    return 0


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
