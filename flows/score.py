"""Batch scoring with the registered champion (``models:/<name>@champion``)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.runners import configured_task_runner, flow_settings, resolve_batch
from tasks.common import run_dir
from tasks.data import prepare_dataset, validate_file
from tasks.drift import load_champion, score_batch


@flow(name="score", task_runner=configured_task_runner(), log_prints=True)
def score_flow(batch: str, config_files: list[str] | None = None, output: str | None = None) -> str:
    """validate (labels optional) → load champion → score → write Parquet with predictions.

    Args:
        batch: a configured batch name or a file path.
        config_files: extra YAML overlays.
        output: where to write the scored file; default: the run's folder under the state dir.
    """
    settings = flow_settings(config_files)
    path = resolve_batch(settings, batch)
    _, contract = prepare_dataset(settings)
    out_dir = run_dir(settings, "score")
    validate_file(settings, path, contract, out_dir / "validation", require_label=False)
    champion = load_champion(settings)
    destination = Path(output) if output else out_dir / f"{path.stem}.scored.parquet"
    return str(score_batch(settings, champion, contract, path, destination))


if __name__ == "__main__":
    import sys

    print(score_flow(sys.argv[1] if len(sys.argv) > 1 else "batch_04"))
