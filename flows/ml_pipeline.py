"""The whole ML lifecycle on the configured dataset, batch by batch, as production would see it."""

from __future__ import annotations

import json

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.monitor import monitor_and_react
from flows.runners import configured_task_runner, flow_settings
from flows.train import train_and_gate
from flows.validate import validate_files
from tasks.common import retrying, run_dir
from tasks.data import prepare_dataset
from tasks.drift import load_champion, score_batch


@flow(name="ml-pipeline", task_runner=configured_task_runner(), log_prints=True)
def ml_pipeline_flow(config_files: list[str] | None = None) -> dict:
    """validate all → train + gate → for each batch in time order: monitor (→ retrain + gate) → score the last batch.

    The stages run as task groups inside this flow run (the standalone flows ``validate``,
    ``train``, ``monitor``, ``retrain``, ``score`` wrap the same groups); drift-triggered
    retraining runs here too, always (the next batch is judged by the champion it produced).

    Args:
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
    """
    settings = flow_settings(config_files)
    files, contract = prepare_dataset(settings)
    validate_files(settings, list(files.values()), contract)
    trained = train_and_gate(settings, files["reference"], contract)
    batches = [path for name, path in files.items() if name != "reference"]
    # inline: the next batch is judged by the champion this batch's retraining produced
    monitored = [monitor_and_react(settings, path, contract, config_files, retrain_via="inline") for path in batches]
    scored = None
    if batches:
        out = run_dir(settings, "score") / f"{batches[-1].stem}.scored.parquet"
        champion = retrying(load_champion, settings)(settings)
        scored = str(score_batch(champion, contract, batches[-1], out))
    create_table_artifact(
        [_row(m) for m in monitored], key="ml-pipeline-batches", description="Drift verdict and retraining per batch"
    )
    return {"train": trained, "monitor": monitored, "scored": scored}


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


def main(args: list[str]) -> None:
    """``python -m flows.ml_pipeline [--config FILE]``: the ML lifecycle once."""
    from flows.ml_pipeline import ml_pipeline_flow  # imported after --config is in the environment: it picks the task runner

    print(json.dumps(ml_pipeline_flow(), indent=2, default=str))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
