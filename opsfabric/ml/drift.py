"""Drift detection with Evidently: per-feature and dataset-level data drift, plus performance.

Evidently picks a test per column by type and size (Kolmogorov-Smirnov or chi-squared for small
samples, Wasserstein or Jensen-Shannon distance for large ones) and reports for each column
whether it drifted. When the current batch has labels, the same Evidently report carries a
classification-quality section for the champion's predictions on reference and current data.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opsfabric.ml.dataset import FeatureSpec
from opsfabric.ml.gate import DriftSummary

PREDICTION_COLUMN = "prediction_proba"
PREDICTED_LABEL_COLUMN = "prediction"


@dataclass
class FeatureDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass
class DriftReport:
    """Evidence for a drift verdict: per-feature results, dataset share, and performance."""

    batch: str
    n_reference: int
    n_current: int
    features: list[FeatureDrift]
    metric: str
    reference_score: float | None = None
    current_score: float | None = None
    html_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def drifted_features(self) -> list[str]:
        return [f.column for f in self.features if f.drifted]

    @property
    def drift_share(self) -> float:
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    def summary(self) -> DriftSummary:
        return DriftSummary(
            drift_share=self.drift_share,
            drifted_features=self.drifted_features,
            metric=self.metric,
            reference_score=self.reference_score,
            current_score=self.current_score,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["drift_share"] = self.drift_share
        data["drifted_features"] = self.drifted_features
        return data

    def to_markdown(self, verdict_reasons: list[str], retrain: bool) -> str:
        lines = [
            f"# Drift report for `{self.batch}`: {'RETRAIN' if retrain else 'no action'}",
            "",
            *[f"- {r}" for r in verdict_reasons],
            "",
            f"Reference rows: {self.n_reference}, current rows: {self.n_current}.",
        ]
        if self.current_score is not None:
            lines.append(
                f"Champion {self.metric}: reference {self.reference_score:.4f}, current {self.current_score:.4f}."
            )
        lines += ["", "| feature | method | score | threshold | drifted |", "|---|---|---|---|---|"]
        for f in sorted(self.features, key=lambda f: (not f.drifted, f.column)):
            lines.append(f"| {f.column} | {f.method} | {f.score:.4f} | {f.threshold:.3f} | {'yes' if f.drifted else 'no'} |")
        return "\n".join(lines)


def sample_rows(frame: pd.DataFrame, n_rows: int | None, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of at most ``n_rows`` rows (all rows when None or smaller)."""
    if n_rows is None or len(frame) <= n_rows:
        return frame
    return frame.sample(n=n_rows, random_state=seed)


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: FeatureSpec,
    *,
    batch: str,
    metric: str = "roc_auc",
    reference_score: float | None = None,
    current_score: float | None = None,
    sample: int | None = None,
    html_path: Path | None = None,
) -> DriftReport:
    """Run Evidently's data drift preset (and classification quality when predictions and labels exist).

    Args:
        reference, current: tables with the feature columns; ``current`` may carry the target and
            ``prediction_proba`` / ``prediction`` columns (see :func:`opsfabric.ml.scoring.score_frame`).
        spec: feature roles.
        batch: name for the report.
        metric, reference_score, current_score: the champion's score, carried into the verdict.
        sample: drift on a seeded sample of this many rows per side (None: all rows).
        html_path: where to write Evidently's HTML report (None: no file).
    """
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset, DataDriftPreset

    reference = sample_rows(reference, sample)
    current = sample_rows(current, sample)
    with_quality = all(c in current.columns and c in reference.columns for c in (spec.target, PREDICTION_COLUMN))
    classification = (
        [
            BinaryClassification(
                target=spec.target,
                prediction_labels=PREDICTED_LABEL_COLUMN,
                prediction_probas=PREDICTION_COLUMN,
                pos_label=1,
            )
        ]
        if with_quality
        else None
    )
    definition = DataDefinition(
        numerical_columns=list(spec.numeric),
        categorical_columns=list(spec.categorical),
        classification=classification,
    )
    columns = spec.features + ([spec.target, PREDICTION_COLUMN, PREDICTED_LABEL_COLUMN] if with_quality else [])

    def as_dataset(frame: pd.DataFrame):
        table = frame[columns].copy()
        if with_quality:
            table[spec.target] = (table[spec.target].astype(str) == str(spec.positive_label)).astype(int)
        for col in spec.categorical:
            table[col] = table[col].astype(str)
        return Dataset.from_pandas(table, data_definition=definition)

    presets = [DataDriftPreset(columns=spec.features)] + ([ClassificationPreset()] if with_quality else [])
    snapshot = Report(presets, include_tests=True).run(as_dataset(current), as_dataset(reference))
    features = _feature_drift(snapshot.dict(), spec.features)
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))
    return DriftReport(
        batch=batch,
        n_reference=len(reference),
        n_current=len(current),
        features=features,
        metric=metric,
        reference_score=reference_score,
        current_score=current_score,
        html_path=str(html_path) if html_path else None,
    )


def _feature_drift(result: dict[str, Any], feature_columns: list[str]) -> list[FeatureDrift]:
    """Per-column results from an Evidently snapshot: score from the metric, verdict from its test."""
    verdicts: dict[str, bool] = {}
    for test in result.get("tests", []):
        name = test.get("name", "")
        if name.startswith("Value Drift for column "):
            verdicts[name.removeprefix("Value Drift for column ")] = test.get("status") == "FAIL"
    features: list[FeatureDrift] = []
    for metric in result.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        column = config["column"]
        if column not in feature_columns:
            continue
        if column not in verdicts:
            raise RuntimeError(f"Evidently returned no drift test for column {column!r}")
        features.append(
            FeatureDrift(
                column=column,
                method=str(config.get("method")),
                score=float(metric["value"]),
                threshold=float(config.get("threshold")),
                drifted=verdicts[column],
            )
        )
    missing = set(feature_columns) - {f.column for f in features}
    if missing:
        raise RuntimeError(f"Evidently returned no drift result for columns {sorted(missing)}")
    return features


def write_drift_report(report: DriftReport, path: Path, decision: dict[str, Any] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = report.to_dict() | ({"decision": decision} if decision else {})
    path.write_text(json.dumps(payload, indent=2, default=_json_default))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, float)) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)
