"""Scoring a batch with a model: probabilities and labels appended to the input rows."""

from __future__ import annotations

from typing import Any

import pandas as pd

from opsfabric.ml.dataset import FeatureSpec
from opsfabric.ml.drift import PREDICTED_LABEL_COLUMN, PREDICTION_COLUMN
from opsfabric.ml.training import positive_scores


def score_frame(model: Any, frame: pd.DataFrame, spec: FeatureSpec, threshold: float = 0.5) -> pd.DataFrame:
    """Return ``frame`` with ``prediction_proba`` (positive class) and ``prediction`` (0/1) columns."""
    scored = frame.copy()
    scored[PREDICTION_COLUMN] = positive_scores(model, frame, spec)
    scored[PREDICTED_LABEL_COLUMN] = (scored[PREDICTION_COLUMN] >= threshold).astype(int)
    return scored
