"""One ops report across ML, RAG and agents: ``python -m flows.ops_report [--since-days N]``.

The champion and its age, drift verdicts per batch, the live index and its scores, the agent
regression pass rate, cost and latency trends, and everything failing (failed or killed runs, a
gate that said no, regression failures), with links to MLflow runs and Prefect flow runs. The HTML
page (plots embedded) is artifact ``ops_report.html`` of a run in MLflow experiment
``<prefix>-ops-report``; a summary is the Prefect markdown artifact ``ops-report``.
"""

from __future__ import annotations

from prefect import flow

from flows.runners import flow_settings
from tasks.ops import build_ops_report, collect_ops_state, log_ops_report, publish_ops_report


@flow(name="ops-report", log_prints=True)
def ops_report_flow(config_files: list[str] | None = None, since_days: float = 30.0) -> dict:
    """collect (MLflow, registry, index registry) → build the report → HTML to MLflow → markdown artifact."""
    settings = flow_settings(config_files)
    state = collect_ops_state(settings)
    report, page = build_ops_report(state, since_days)
    run_id = log_ops_report(settings, report, page)
    publish_ops_report(settings, report, run_id)
    return report.summary() | {"mlflow_run_id": run_id}


def main(args: list[str]) -> None:
    """``python -m flows.ops_report [--config FILE] [--since-days N]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m flows.ops_report", description=__doc__.splitlines()[0])
    parser.add_argument("--since-days", type=float, default=30.0, help="window of the problems and trends (default 30)")
    options = parser.parse_args(args)
    print(json.dumps(ops_report_flow(since_days=options.since_days), indent=2, default=str))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
