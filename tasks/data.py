"""Data tasks: generate, learn the dataset contract, validate files."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.ml import contract as data_contract
from opsfabric.ml.contract import DatasetContract
from opsfabric.ml.errors import DataValidationError
from opsfabric.ml.validation import ValidationReport
from opsfabric.settings import Settings


@task(name="prepare-dataset", cache_policy=NO_CACHE)
def prepare_dataset(settings: Settings) -> tuple[dict[str, Path], DatasetContract]:
    """The dataset's files (generated if configured and missing) and its contract (feature roles, schema)."""
    return data_contract.generate_dataset(settings), data_contract.load_contract(settings)


@task(name="validate-file", cache_policy=NO_CACHE)
def validate_file(
    settings: Settings, path: Path, contract: DatasetContract, report_dir: Path, require_label: bool | None = None
) -> ValidationReport:
    """Validate one file; publish a markdown artifact either way; fail the task on a broken rule."""
    try:
        report = data_contract.validate_file(settings, Path(path), contract, report_dir, require_label=require_label)
    except DataValidationError as exc:
        if exc.report is not None:
            create_markdown_artifact(exc.report.to_markdown(), key=_artifact_key("validation", path), description=str(path))
        raise
    create_markdown_artifact(report.to_markdown(), key=_artifact_key("validation", path), description=str(path))
    # Which worker did the work: on Dask a validation runs in a worker process, not the flow's.
    get_run_logger().info("validated %s on %s", Path(path).name, _where_this_runs())
    return report


def _where_this_runs() -> str:
    """``dask worker <address> (pid N)`` inside a Dask worker, else ``process N``."""
    try:
        from distributed import get_worker

        return f"dask worker {get_worker().address} (pid {os.getpid()})"
    except (ImportError, ValueError):  # ValueError: not inside a Dask worker
        return f"process {os.getpid()}"


def _artifact_key(prefix: str, path: Path | str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    stem = "".join(ch if ch.isalnum() else "-" for ch in Path(path).stem.lower())
    return f"{prefix}-{stem}"
