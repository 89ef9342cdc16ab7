"""Data validation: schema, missing and duplicate shares, row count, label presence.

``validate_table`` runs every rule and returns a :class:`ValidationReport`; it never stops at the
first failure, so one run tells the user everything that is wrong. ``raise_for_failures`` turns a
failed report into a :class:`DataValidationError` whose message names file, column, rule and rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from opsfabric.ml.dataset import FeatureSpec
from opsfabric.ml.errors import DataValidationError
from opsfabric.settings import DatasetSettings, ValidationParams

MAX_ROWS_NAMED = 5


@dataclass
class TableSchema:
    """What a valid table looks like; learned from the reference batch plus configuration."""

    numeric: list[str]
    categorical: list[str]
    target: str
    categories: dict[str, list[str]]
    ranges: dict[str, tuple[float | None, float | None]]
    target_values: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckResult:
    rule: str
    passed: bool
    column: str | None = None
    detail: str = ""
    rows: list[int] = field(default_factory=list)

    def describe(self) -> str:
        where = f"column {self.column!r}: " if self.column else ""
        rows = f" (rows {', '.join(map(str, self.rows))})" if self.rows else ""
        return f"{where}rule '{self.rule}' failed: {self.detail}{rows}"


@dataclass
class ValidationReport:
    source: str
    n_rows: int
    n_columns: int
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "passed": self.passed,
            "n_rows": self.n_rows,
            "n_columns": self.n_columns,
            "n_failed": len(self.failures),
            "checks": [asdict(c) for c in self.checks],
        }

    def to_markdown(self) -> str:
        status = "PASSED" if self.passed else f"FAILED ({len(self.failures)} rule(s))"
        lines = [
            f"# Validation of `{Path(self.source).name}`: {status}",
            "",
            f"{self.n_rows} rows, {self.n_columns} columns, {len(self.checks)} checks.",
            "",
            "| rule | column | result | detail |",
            "|---|---|---|---|",
        ]
        shown = self.failures + [c for c in self.checks if c.passed and c.rule in ("row_count", "duplicate_share")]
        for c in shown:
            lines.append(f"| {c.rule} | {c.column or ''} | {'ok' if c.passed else 'FAIL'} | {c.detail} |")
        return "\n".join(lines)


def build_schema(reference: pd.DataFrame, spec: FeatureSpec, dataset: DatasetSettings) -> TableSchema:
    """Schema from configuration, filling open category lists from the reference batch."""
    categories = {
        col: sorted(map(str, dataset.categories.get(col) or reference[col].dropna().astype(str).unique()))
        for col in spec.categorical
    }
    target_values = sorted(reference[spec.target].dropna().unique().tolist()) if spec.target in reference else []
    return TableSchema(
        numeric=list(spec.numeric),
        categorical=list(spec.categorical),
        target=spec.target,
        categories=categories,
        ranges={k: tuple(v) for k, v in dataset.ranges.items() if k in spec.numeric},
        target_values=[_plain(v) for v in target_values],
    )


def _plain(value: Any) -> Any:
    """numpy scalars to Python scalars so schemas serialise to JSON."""
    return value.item() if hasattr(value, "item") else value


def _first_rows(mask: pd.Series) -> list[int]:
    return [int(i) for i in mask[mask].index[:MAX_ROWS_NAMED]]


def validate_table(
    frame: pd.DataFrame, schema: TableSchema, params: ValidationParams, *, source: str, require_label: bool | None = None
) -> ValidationReport:
    """Check a table against a schema and validation parameters.

    Row numbers in the report are 0-based positions among the file's data rows.

    Args:
        frame: the table as read from ``source``.
        schema: expected columns, dtypes, categories, ranges and labels.
        params: thresholds (minimum rows, missing and duplicate shares).
        source: file name, for messages.
        require_label: override ``params.require_label`` (scoring batches may be unlabelled).
    """
    frame = frame.reset_index(drop=True)
    checks: list[CheckResult] = []
    require_label = params.require_label if require_label is None else require_label

    checks.append(
        CheckResult(
            "row_count",
            len(frame) >= params.min_rows,
            detail=f"{len(frame)} rows (minimum {params.min_rows})",
        )
    )
    expected = [*schema.numeric, *schema.categorical] + ([schema.target] if require_label else [])
    missing_columns = [c for c in expected if c not in frame.columns]
    for col in missing_columns:
        checks.append(CheckResult("required_column", False, col, "column is missing from the file"))

    for col in schema.numeric:
        if col in frame.columns:
            checks.extend(_check_numeric(frame[col], col, schema.ranges.get(col)))
    for col in schema.categorical:
        if col in frame.columns:
            checks.extend(_check_categorical(frame[col], col, schema.categories.get(col)))
    for col in [c for c in expected if c in frame.columns]:
        checks.extend(_check_missing(frame[col], col, params.max_missing_share))

    if require_label and schema.target in frame.columns:
        checks.extend(_check_label(frame[schema.target], schema))

    present = [c for c in expected if c in frame.columns]
    if present and len(frame):
        dup_share = float(frame.duplicated(subset=present).mean())
        checks.append(
            CheckResult(
                "duplicate_share",
                dup_share <= params.max_duplicate_share,
                detail=f"{dup_share:.1%} duplicate rows (maximum {params.max_duplicate_share:.1%})",
                rows=_first_rows(frame.duplicated(subset=present)) if dup_share > params.max_duplicate_share else [],
            )
        )
    return ValidationReport(source=str(source), n_rows=len(frame), n_columns=len(frame.columns), checks=checks)


def _check_numeric(values: pd.Series, col: str, bounds: tuple[float | None, float | None] | None) -> list[CheckResult]:
    if values.isna().all():
        return []  # reported once by the missing-value check
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        coerced = pd.to_numeric(values, errors="coerce")
        bad = coerced.isna() & values.notna()
        example = values[bad].iloc[0] if bad.any() else None
        return [
            CheckResult(
                "dtype",
                False,
                col,
                f"expected numeric, found {values.dtype} with non-numeric value {example!r}",
                _first_rows(bad),
            )
        ]
    results = [CheckResult("dtype", True, col, f"numeric ({values.dtype})")]
    if bounds:
        low, high = bounds
        out = pd.Series(False, index=values.index)
        if low is not None:
            out |= values < low
        if high is not None:
            out |= values > high
        results.append(
            CheckResult(
                "range",
                not out.any(),
                col,
                f"{int(out.sum())} value(s) outside [{low}, {high}]" if out.any() else f"within [{low}, {high}]",
                _first_rows(out),
            )
        )
    return results


def _check_categorical(values: pd.Series, col: str, allowed: list[str] | None) -> list[CheckResult]:
    if allowed is None or values.isna().all():
        return []
    as_text = values.dropna().astype(str)
    unknown = ~as_text.isin(allowed)
    if unknown.any():
        seen = sorted(as_text[unknown].unique())[:MAX_ROWS_NAMED]
        return [
            CheckResult(
                "allowed_categories",
                False,
                col,
                f"unknown categories {seen} (allowed: {allowed})",
                [int(i) for i in as_text[unknown].index[:MAX_ROWS_NAMED]],
            )
        ]
    return [CheckResult("allowed_categories", True, col, "all values known")]


def _check_missing(values: pd.Series, col: str, max_share: float) -> list[CheckResult]:
    share = float(values.isna().mean()) if len(values) else 0.0
    if len(values) and share == 1.0:
        return [CheckResult("all_missing", False, col, "every value is missing (NaN)")]
    return [
        CheckResult(
            "missing_share",
            share <= max_share,
            col,
            f"{share:.1%} missing (maximum {max_share:.1%})",
            _first_rows(values.isna()) if share > max_share else [],
        )
    ]


def _check_label(labels: pd.Series, schema: TableSchema) -> list[CheckResult]:
    missing = labels.isna()
    results = [
        CheckResult(
            "label_present",
            not missing.any(),
            schema.target,
            f"{int(missing.sum())} row(s) have no label" if missing.any() else "every row labelled",
            _first_rows(missing),
        )
    ]
    if schema.target_values and not missing.all():
        allowed = {str(v) for v in schema.target_values}
        unknown = labels.notna() & ~labels.astype(str).isin(allowed)
        if unknown.any():
            results.append(
                CheckResult(
                    "label_values",
                    False,
                    schema.target,
                    f"labels {sorted(labels[unknown].astype(str).unique())[:MAX_ROWS_NAMED]} not in {schema.target_values}",
                    _first_rows(unknown),
                )
            )
    return results


def raise_for_failures(report: ValidationReport) -> None:
    """Raise :class:`DataValidationError` naming every failed rule, or return if all passed."""
    if report.passed:
        return
    lines = [f"{report.source}: {len(report.failures)} validation rule(s) failed"]
    lines += [f"  - {f.describe()}" for f in report.failures]
    raise DataValidationError("\n".join(lines), report=report)


def write_report(report: ValidationReport, path: Path) -> Path:
    """Write the machine-readable report as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return path
