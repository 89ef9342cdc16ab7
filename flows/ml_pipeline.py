"""The whole ML lifecycle on the configured dataset, batch by batch, as production would see it."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.monitor import monitor_flow
from flows.runners import flow_settings
from flows.score import score_flow
from flows.train import train_flow
from flows.validate import validate_flow


@flow(name="ml-pipeline", log_prints=True)
def ml_pipeline_flow(config_files: list[str] | None = None) -> dict:
    """validate all → train + gate → for each batch in time order: monitor (→ retrain + gate) → score the last batch."""
    settings = flow_settings(config_files)
    validate_flow(config_files)
    trained = train_flow(config_files)
    monitored = [monitor_flow(batch, config_files) for batch in _batch_names(settings)]
    scored = score_flow(monitored[-1]["batch"], config_files) if monitored else None
    create_table_artifact(
        [_row(m) for m in monitored], key="ml-pipeline-batches", description="Drift verdict and retraining per batch"
    )
    return {"train": trained, "monitor": monitored, "scored": scored}


def _batch_names(settings) -> list[str]:
    return [settings.path(b).stem for b in settings.dataset.batches]


def _row(monitored: dict) -> dict:
    retrain = monitored.get("retrain_result") or {}
    return {
        "batch": monitored["batch"],
        "champion": monitored["champion_version"],
        "drift_share": round(monitored["drift_share"], 3),
        "retrain": monitored["retrain"],
        "gate": "-" if not retrain else ("promoted v" + str(retrain.get("version")) if retrain.get("promoted") else "rejected"),
        "reasons": " | ".join(monitored["reasons"]),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(ml_pipeline_flow(), indent=2, default=str))
