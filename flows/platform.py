"""The main job behind `make run`: the ML lifecycle, then the RAG lifecycle. Agents join here later."""

from __future__ import annotations

import json

from prefect import flow

from flows.ml_pipeline import ml_pipeline_flow
from flows.rag_pipeline import rag_pipeline_flow
from opsfabric.settings import load_settings


@flow(name="opsfabric-platform", log_prints=True)
def platform_flow(config_files: list[str] | None = None) -> dict:
    """ML: validate → train → gate → monitor each batch → retrain on drift → score.
    RAG: golden set → incremental ingest into a new index version → evaluate → gate the live alias.
    """
    ml = ml_pipeline_flow(config_files)
    rag = rag_pipeline_flow(config_files)
    return {"ml": ml, "rag": rag}


def main(args: list[str]) -> None:
    """``python -m flows.platform [--config FILE]``: the whole platform once (what ``make run`` runs)."""
    load_settings()  # a configuration error fails here, named, before Prefect starts a server
    print(json.dumps(platform_flow(), indent=2, default=str))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
