"""Scoring a batch with a model: probabilities and labels appended to the input rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from opsfabric.ml.dataset import FeatureSpec, read_table
from opsfabric.ml.drift import PREDICTED_LABEL_COLUMN, PREDICTION_COLUMN
from opsfabric.ml.model import positive_scores, predicted_labels


def score_frame(model: Any, frame: pd.DataFrame, spec: FeatureSpec, *, threshold: float) -> pd.DataFrame:
    """Return ``frame`` with ``prediction_proba`` (positive class) and ``prediction`` (0/1) columns.

    Args:
        threshold: the decision threshold recorded with ``model`` (see :class:`opsfabric.ml.champion.Champion`).
    """
    scored = frame.copy()
    scored[PREDICTION_COLUMN] = positive_scores(model, frame, spec)
    scored[PREDICTED_LABEL_COLUMN] = predicted_labels(scored[PREDICTION_COLUMN].to_numpy(), threshold)
    return scored


def score_batch_file(model: Any, spec: FeatureSpec, batch_path: Path, out_path: Path, *, threshold: float) -> Path:
    """Score every row of a batch file and write the result (input columns + predictions) as Parquet."""
    scored = score_frame(model, read_table(batch_path), spec, threshold=threshold)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scored.to_parquet(out_path, index=False)
    return out_path
