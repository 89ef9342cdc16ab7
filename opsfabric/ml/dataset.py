"""Reading tables and resolving which columns are features, target, time and id."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from opsfabric.files import file_md5  # noqa: F401  (the DVC file hash; imported from here by the ML modules)
from opsfabric.ml.errors import DataLoadError
from opsfabric.settings import DatasetSettings

SUPPORTED_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns play which role. Built from configuration, inferred where left open."""

    target: str
    numeric: list[str]
    categorical: list[str]
    time_column: str | None = None
    id_column: str | None = None
    positive_label: object = 1
    ignored: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, with an error that names the file when it cannot.

    Raises:
        DataLoadError: missing, empty, corrupt or unsupported file.
    """
    path = Path(path)
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataLoadError(f"{path}: unsupported file type {path.suffix!r} (use .csv or .parquet)")
    if not path.is_file():
        raise DataLoadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataLoadError(f"{path}: file is empty (0 bytes)")
    try:
        frame = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataLoadError(f"{path}: file has no columns ({exc})") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataLoadError(f"{path}: cannot be read as {kind}: {exc}") from exc
    if frame.columns.empty:
        raise DataLoadError(f"{path}: file has no columns")
    return frame


def resolve_feature_spec(dataset: DatasetSettings, reference: pd.DataFrame) -> FeatureSpec:
    """Feature roles from configuration; columns left open are inferred from the reference dtypes.

    Numeric dtypes become numeric features; object, category and bool become categorical.
    Target, time and id columns are never features.
    """
    reserved = {dataset.target, dataset.time_column, dataset.id_column} - {None}
    numeric = dataset.numeric_features
    categorical = dataset.categorical_features
    candidates = [c for c in reference.columns if c not in reserved]
    if numeric is None:
        numeric = [
            c
            for c in candidates
            if pd.api.types.is_numeric_dtype(reference[c])
            and not pd.api.types.is_bool_dtype(reference[c])
            and c not in (categorical or [])
        ]
    if categorical is None:
        categorical = [
            c
            for c in candidates
            if c not in numeric
            and (
                pd.api.types.is_object_dtype(reference[c])
                or isinstance(reference[c].dtype, pd.CategoricalDtype)
                or pd.api.types.is_bool_dtype(reference[c])
                or pd.api.types.is_string_dtype(reference[c])
            )
        ]
    used = set(numeric) | set(categorical) | reserved
    return FeatureSpec(
        target=dataset.target,
        numeric=list(numeric),
        categorical=list(categorical),
        time_column=dataset.time_column,
        id_column=dataset.id_column,
        positive_label=dataset.positive_label,
        ignored=[c for c in reference.columns if c not in used],
    )
