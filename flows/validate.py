"""Validate the reference batch and production batches against the dataset contract."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, unmapped

from flows.runners import configured_task_runner, flow_settings
from opsfabric.ml.contract import DatasetContract
from opsfabric.settings import Settings
from tasks.common import run_dir
from tasks.data import prepare_dataset, validate_file


def validate_files(settings: Settings, files: list[Path], contract: DatasetContract) -> list[dict]:
    """Validate files concurrently on the task runner; raises on the first broken file."""
    reports = validate_file.map(
        settings=unmapped(settings), path=files, contract=unmapped(contract), report_dir=unmapped(run_dir(settings, "validation"))
    )
    return [report.to_dict() for report in reports.result()]


@flow(name="validate", task_runner=configured_task_runner(), log_prints=True)
def validate_flow(config_files: list[str] | None = None, batches: list[str] | None = None) -> list[dict]:
    """Schema, missing/duplicate shares, row count and labels for every file; fails on a broken file.

    Args:
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
        batches: file paths to validate; default: the reference and every configured batch.
    """
    settings = flow_settings(config_files)
    files, contract = prepare_dataset(settings)
    targets = [settings.path(b) for b in batches] if batches else list(files.values())
    return validate_files(settings, targets, contract)


def main(args: list[str]) -> None:
    """``python -m flows.validate [--config FILE] [file ...]``: validate files (default: every configured one)."""
    from flows.validate import validate_flow  # imported after --config is in the environment: it picks the task runner

    reports = validate_flow(batches=args or None)
    print(json.dumps([{"source": r["source"], "passed": r["passed"]} for r in reports], indent=2))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
