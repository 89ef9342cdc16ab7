"""The main job behind `make run`: the ML lifecycle, the RAG lifecycle, then the agent regression suite."""

from __future__ import annotations

import json

from prefect import flow

from flows.agent_regression import agent_regression_flow
from flows.ml_pipeline import ml_pipeline_flow
from flows.rag_pipeline import rag_pipeline_flow
from opsfabric.settings import load_settings


@flow(name="opsfabric-platform", log_prints=True)
def platform_flow(config_files: list[str] | None = None) -> dict:
    """ML: validate → train → gate → monitor each batch → retrain on drift → score.
    RAG: golden set → incremental ingest into a new index version → evaluate → gate the live alias.
    Agents: replay the golden-trace scenarios and diff every run against its golden trace.
    """
    ml = ml_pipeline_flow(config_files)
    rag = rag_pipeline_flow(config_files)
    agents = agent_regression_flow(config_files)
    return {"ml": ml, "rag": rag, "agents": agents}


def main(args: list[str]) -> None:
    """``python -m flows.platform [--config FILE]``: the whole platform once (what ``make run`` runs)."""
    load_settings()  # a configuration error fails here, named, before Prefect starts a server
    result = platform_flow()
    print(json.dumps(result, indent=2, default=str))
    agents = result["agents"]
    print(f"agent regression: pass rate {agents['pass_rate']:.3f} over {len(agents['verdicts'])} scenarios (MLflow run {agents['mlflow_run_id']})")


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
