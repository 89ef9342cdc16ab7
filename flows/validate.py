"""Validate the reference batch and production batches against the dataset contract."""

from __future__ import annotations

from prefect import flow, unmapped

from flows.runners import configured_task_runner, flow_settings
from tasks.common import run_dir
from tasks.data import generate_data, load_contract, validate_file


@flow(name="validate", task_runner=configured_task_runner(), log_prints=True)
def validate_flow(config_files: list[str] | None = None, batches: list[str] | None = None) -> list[dict]:
    """Schema, missing/duplicate shares, row count and labels for every file; fails on the first broken file.

    Args:
        config_files: extra YAML overlays (profiles, dataset variants).
        batches: file paths to validate; default: the reference and every configured batch.
    """
    settings = flow_settings(config_files)
    files = generate_data(settings)
    contract = load_contract(settings)
    targets = [settings.path(b) for b in batches] if batches else list(files.values())
    reports = validate_file.map(
        settings=unmapped(settings), path=targets, contract=unmapped(contract), report_dir=unmapped(run_dir(settings, "validation"))
    )
    return [report.to_dict() for report in reports.result()]


if __name__ == "__main__":
    validate_flow()
