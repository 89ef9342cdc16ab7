"""The model: a scikit-learn Pipeline (preprocessing + classifier), fitted, applied and evaluated.

Pure functions on DataFrames; nothing here knows about files, MLflow or Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from opsfabric.ml.dataset import FeatureSpec
from opsfabric.settings import ModelParams

SAMPLE_WEIGHT_COLUMN = "__sample_weight__"

MODEL_CLASSES: dict[str, type[ClassifierMixin]] = {
    "gradient_boosting": GradientBoostingClassifier,
    "random_forest": RandomForestClassifier,
    "logistic_regression": LogisticRegression,
}


@dataclass
class TrainedModel:
    """A fitted pipeline with the data it was fitted and evaluated on."""

    pipeline: Pipeline
    metrics: dict[str, float]
    params: dict[str, Any]
    n_train: int
    n_eval: int


def build_pipeline(spec: FeatureSpec, model: ModelParams, *, seed: int) -> Pipeline:
    """Imputation, scaling and one-hot encoding in front of the configured classifier."""
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    preprocess = ColumnTransformer(
        [("numeric", numeric, spec.numeric), ("categorical", categorical, spec.categorical)],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    estimator_cls = MODEL_CLASSES[model.kind]
    hyperparameters = dict(model.hyperparameters)
    if "random_state" in estimator_cls().get_params():
        hyperparameters.setdefault("random_state", seed)
    return Pipeline([("preprocess", preprocess), ("model", estimator_cls(**hyperparameters))])


def features_of(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The model's input columns, categorical ones as strings (what the signature declares)."""
    features = frame[spec.features].copy()
    for col in spec.categorical:
        features[col] = features[col].astype("string").astype(object)
    for col in spec.numeric:
        features[col] = features[col].astype("float64")
    return features


def binary_labels(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """1 where the target equals the positive label, else 0."""
    return (frame[spec.target].astype(str) == str(spec.positive_label)).astype(int).to_numpy()


def fit_model(train: pd.DataFrame, spec: FeatureSpec, model: ModelParams, *, seed: int) -> Pipeline:
    """Fit the pipeline on ``train`` (rows weighted by a ``SAMPLE_WEIGHT_COLUMN`` column if present)."""
    pipeline = build_pipeline(spec, model, seed=seed)
    fit_params = {}
    if SAMPLE_WEIGHT_COLUMN in train.columns:
        fit_params["model__sample_weight"] = train[SAMPLE_WEIGHT_COLUMN].to_numpy()
    pipeline.fit(features_of(train, spec), binary_labels(train, spec), **fit_params)
    return pipeline


def positive_scores(pipeline: Any, frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Probability of the positive class for each row."""
    return pipeline.predict_proba(features_of(frame, spec))[:, 1]


def predicted_labels(scores: np.ndarray, threshold: float) -> np.ndarray:
    """1 where the positive-class probability reaches ``threshold`` (the model's decision threshold), else 0."""
    return (scores >= threshold).astype(int)


def evaluate_model(pipeline: Any, evaluation: pd.DataFrame, spec: FeatureSpec, *, threshold: float) -> dict[str, float]:
    """Accuracy, F1 and ROC-AUC of ``pipeline`` on labelled data.

    Args:
        threshold: the model's decision threshold; accuracy and F1 depend on it, ROC-AUC does not.
    """
    y_true = binary_labels(evaluation, spec)
    scores = positive_scores(pipeline, evaluation, spec)
    y_pred = predicted_labels(scores, threshold)
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "positive_rate": float(y_true.mean()),
    }
    metrics["roc_auc"] = float(roc_auc_score(y_true, scores)) if len(set(y_true)) == 2 else float("nan")
    return metrics


def train_candidate(
    train: pd.DataFrame, evaluation: pd.DataFrame, spec: FeatureSpec, model: ModelParams, *, seed: int, threshold: float
) -> TrainedModel:
    """Fit on ``train`` and evaluate on ``evaluation``: one candidate, ready for the gate."""
    pipeline = fit_model(train, spec, model, seed=seed)
    return TrainedModel(
        pipeline=pipeline,
        metrics=evaluate_model(pipeline, evaluation, spec, threshold=threshold),
        params={
            "model_kind": model.kind,
            "seed": seed,
            "decision_threshold": threshold,
            **{f"model__{k}": v for k, v in model.hyperparameters.items()},
        },
        n_train=len(train),
        n_eval=len(evaluation),
    )
