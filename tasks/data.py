"""Data tasks: generate, learn the dataset contract, validate files."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.ml import steps
from opsfabric.ml.errors import DataValidationError
from opsfabric.settings import Settings


@task(name="prepare-dataset", cache_policy=NO_CACHE)
def prepare_dataset(settings: Settings) -> tuple[dict[str, Path], steps.DatasetContract]:
    """The dataset's files (generated if configured and missing) and its contract (feature roles, schema)."""
    return steps.generate_dataset(settings), steps.load_contract(settings)


@task(name="validate-file", cache_policy=NO_CACHE)
def validate_file(
    settings: Settings, path: Path, contract: steps.DatasetContract, report_dir: Path, require_label: bool | None = None
):
    """Validate one file; publish a markdown artifact either way; fail the task on a broken rule."""
    try:
        report = steps.validate_file(settings, Path(path), contract, report_dir, require_label=require_label)
    except DataValidationError as exc:
        if exc.report is not None:
            create_markdown_artifact(exc.report.to_markdown(), key=_artifact_key("validation", path), description=str(path))
        raise
    create_markdown_artifact(report.to_markdown(), key=_artifact_key("validation", path), description=str(path))
    return report


def _artifact_key(prefix: str, path: Path | str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    stem = "".join(ch if ch.isalnum() else "-" for ch in Path(path).stem.lower())
    return f"{prefix}-{stem}"
