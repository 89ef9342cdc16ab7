"""The dataset and its contract: which files exist, what a valid table looks like, and checking one file.

The contract (feature roles and validation schema) is learned once from the reference batch and
shared by every later step, so training, monitoring and scoring agree on what a feature is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opsfabric.ml.dataset import FeatureSpec, file_md5, read_table, resolve_feature_spec
from opsfabric.ml.validation import TableSchema, ValidationReport, build_schema, raise_for_failures, validate_table, write_report
from opsfabric.settings import Settings


def dataset_paths(settings: Settings) -> dict[str, Path]:
    """Reference and batch files, by batch name (file stem), in time order."""
    paths = {"reference": settings.path(settings.dataset.reference)}
    for batch in settings.dataset.batches:
        path = settings.path(batch)
        paths[path.stem] = path
    return paths


def generate_dataset(settings: Settings, *, overwrite: bool = False) -> dict[str, Path]:
    """Write the configured dataset's files with its generator (skipped when they exist).

    Returns:
        Batch name to path for every configured file.

    Raises:
        FileNotFoundError: the generator is ``none`` and a configured file does not exist.
    """
    from opsfabric.ml import datagen

    paths = dataset_paths(settings)
    if not overwrite and all(p.exists() for p in paths.values()):
        return paths
    out_dir = paths["reference"].parent
    params = settings.ml.generate
    if settings.dataset.generator == "churn":
        datagen.generate_churn_batches(
            out_dir,
            seed=params.seed,
            reference_rows=params.reference_rows,
            batch_rows=params.batch_rows,
            start_date=params.start_date,
        )
    elif settings.dataset.generator == "sklearn_breast_cancer":
        datagen.export_breast_cancer(out_dir, seed=params.seed)
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"dataset {settings.dataset.name!r}: configured files not found: {missing}")
    return paths


@dataclass
class DatasetContract:
    """Feature roles and schema, learned once from the reference batch and shared by every step."""

    spec: FeatureSpec
    schema: TableSchema
    reference_md5: str

    def to_dict(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "schema": self.schema.to_dict(), "reference_md5": self.reference_md5}


def load_contract(settings: Settings) -> DatasetContract:
    """Read the reference batch and derive feature roles and validation schema from it.

    Raises:
        DataLoadError: the reference file cannot be read.
        DataValidationError: a configured column is missing from the reference batch.
    """
    reference_path = settings.path(settings.dataset.reference)
    reference = read_table(reference_path)
    spec = resolve_feature_spec(settings.dataset, reference)
    missing = [c for c in [spec.target, *spec.features] if c not in reference.columns]
    if missing:
        from opsfabric.ml.errors import DataValidationError

        raise DataValidationError(
            f"{reference_path}: configured columns {missing} are missing from the reference batch "
            f"(columns present: {list(reference.columns)})"
        )
    return DatasetContract(spec=spec, schema=build_schema(reference, spec, settings.dataset), reference_md5=file_md5(reference_path))


def validate_file(
    settings: Settings, path: Path, contract: DatasetContract, report_dir: Path, *, require_label: bool | None = None
) -> ValidationReport:
    """Validate one file, write its JSON report to ``report_dir``, raise if any rule failed.

    Raises:
        DataLoadError: the file cannot be read (the message names it).
        DataValidationError: a rule failed (the message names column, rule and rows).
    """
    frame = read_table(path)
    report = validate_table(frame, contract.schema, settings.ml.validation, source=str(path), require_label=require_label)
    write_report(report, report_dir / f"{Path(path).stem}.json")
    raise_for_failures(report)
    return report
