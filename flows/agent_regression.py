"""Golden-trace regression of the ops agent: ``python -m flows.agent_regression [run|record ID|approve ID]``.

* ``run`` (default): replay every scenario of ``agents.golden_dir``; pass rate, per-scenario
  latency and cost as MLflow metrics, diffs and traces as MLflow artifacts, a Prefect table
  artifact; the flow run fails when a scenario that passed in the baseline fails now, or when a
  scenario without a baseline verdict (new, or all on the first run) does not pass. Only a run that
  passes the gate is saved as the next baseline.
* ``record ID``: replay one scenario and write what the agent did as ``ID.candidate.yaml`` beside
  the golden (refused if a candidate is already waiting: nothing is overwritten silently).
* ``approve ID``: replace the golden with its reviewed candidate.
"""

from __future__ import annotations

from prefect import flow

from flows.runners import flow_settings
from tasks.agents import gate_on_regressions, publish_results, replay_suite, verdicts_path


@flow(name="agent-regression", log_prints=True)
def agent_regression_flow(config_files: list[str] | None = None) -> dict:
    """Replay the golden suite, publish the results, fail on regressions.

    Args:
        config_files: extra YAML overlays of the configuration (e.g. another ``agents.golden_dir``).
    """
    from opsfabric.agents.regression import load_previous_verdicts

    settings = flow_settings(config_files)
    previous = load_previous_verdicts(verdicts_path(settings))
    report = replay_suite(settings)
    run_id = publish_results(settings, report, previous)
    gate_on_regressions(settings, report, previous)
    return {"pass_rate": report.pass_rate, "verdicts": report.statuses, "mlflow_run_id": run_id}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m flows.agent_regression", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="replay the suite as a Prefect flow")
    for name in ("record", "approve"):
        p = sub.add_parser(name, help=f"{name} the golden of one scenario")
        p.add_argument("scenario", help="scenario id (file name without .yaml)")
        if name == "approve":
            p.add_argument("--sha", default=None, help="the candidate's sha that `record` printed: refuse a candidate changed since")
    args = parser.parse_args(argv)
    if args.command in (None, "run"):
        result = agent_regression_flow()
        print(f"pass rate {result['pass_rate']:.3f} ({len(result['verdicts'])} scenarios), MLflow run {result['mlflow_run_id']}")
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
