"""The main job behind `make run`: the ML lifecycle, the RAG lifecycle, the agent regression suite, then the ops report."""

from __future__ import annotations

import json

from prefect import flow

from flows.agent_regression import agent_regression_flow
from flows.ml_pipeline import ml_pipeline_flow
from flows.ops_report import ops_report_flow
from flows.rag_pipeline import rag_pipeline_flow
from opsfabric.settings import load_settings


@flow(name="opsfabric-platform", log_prints=True)
def platform_flow(config_files: list[str] | None = None) -> dict:
    """ML: validate → train → gate → monitor each batch → retrain on drift → score.
    RAG: golden set → incremental ingest into a new index version → evaluate → gate the live alias.
    Agents: replay the golden-trace scenarios and diff every run against its golden trace.
    Ops: one report across the three (HTML in MLflow, Prefect markdown artifact), written even when the
    regression suite failed; that failure is raised after the report.
    """
    ml = ml_pipeline_flow(config_files)
    rag = rag_pipeline_flow(config_files)
    agents_state = agent_regression_flow(config_files, return_state=True)
    report = ops_report_flow(config_files)
    agents = agents_state.result()  # re-raises a regression, after the report recorded it
    return {"ml": ml, "rag": rag, "agents": agents, "ops_report": report}


def main(args: list[str]) -> None:
    """``python -m flows.platform [--config FILE]``: the whole platform once (what ``make run`` runs)."""
    load_settings()  # a configuration error fails here, named, before Prefect starts a server
    result = platform_flow()
    print(json.dumps(result, indent=2, default=str))
    agents = result["agents"]
    print(f"agent regression: pass rate {agents['pass_rate']:.3f} over {len(agents['verdicts'])} scenarios (MLflow run {agents['mlflow_run_id']})")
    print(f"ops report: MLflow run {result['ops_report']['mlflow_run_id']} (artifact ops_report.html)")


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
