"""The main job behind `make run`. Today: the ML lifecycle. The RAG and agent pipelines join here (issue 4 and later)."""

from __future__ import annotations

import json

from prefect import flow

from flows.ml_pipeline import ml_pipeline_flow


@flow(name="opsfabric-platform", log_prints=True)
def platform_flow(config_files: list[str] | None = None) -> dict:
    """ML pipeline: validate → train → gate → monitor each batch → retrain on drift → score."""
    return {"ml": ml_pipeline_flow(config_files)}


if __name__ == "__main__":
    print(json.dumps(platform_flow(), indent=2, default=str))
