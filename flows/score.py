"""Batch scoring with the registered champion (alias resolved once, model loaded by its version)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.runners import configured_task_runner, flow_settings, resolve_batch
from tasks.common import retrying, run_dir
from tasks.data import prepare_dataset, validate_file
from tasks.drift import load_champion, score_batch


@flow(name="score", task_runner=configured_task_runner(), log_prints=True)
def score_flow(batch: str, config_files: list[str] | None = None, output: str | None = None) -> str:
    """validate (labels optional) → load champion → score with its threshold → write Parquet with predictions.

    Args:
        batch: a configured batch name or a file path.
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
        output: where to write the scored file; default: the run's folder under the state dir.
    """
    settings = flow_settings(config_files)
    path = resolve_batch(settings, batch)
    _, contract = prepare_dataset(settings)
    out_dir = run_dir(settings, "score")
    validate_file(settings, path, contract, out_dir / "validation", require_label=False)
    champion = retrying(load_champion, settings)(settings)
    destination = Path(output) if output else out_dir / f"{path.stem}.scored.parquet"
    return str(score_batch(champion, contract, path, destination))


def main(args: list[str]) -> None:
    """``python -m flows.score [--config FILE] [batch]``: score one batch (default batch_04)."""
    from flows.score import score_flow  # imported after --config is in the environment: it picks the task runner

    print(score_flow(args[0] if args else "batch_04"))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
