"""Training: reproducible, and the model behaves as the data says (behavioural checks)."""

from __future__ import annotations

import numpy as np
import pytest

from opsfabric.ml.dataset import read_table, resolve_feature_spec
from opsfabric.ml.model import SAMPLE_WEIGHT_COLUMN, evaluate_model, positive_scores, train_candidate
from opsfabric.ml.training import recency_weights, split_train_eval
from opsfabric.settings import ModelParams, load_settings

pytestmark = pytest.mark.unit
MODEL = ModelParams(kind="gradient_boosting", hyperparameters={"n_estimators": 60, "max_depth": 3})


@pytest.fixture(scope="module")
def trained(churn_dir):
    settings = load_settings()
    reference = read_table(churn_dir / "reference.parquet")
    spec = resolve_feature_spec(settings.dataset, reference)
    train, evaluation = split_train_eval(reference, spec, test_size=0.25, seed=7)
    return spec, train, evaluation, train_candidate(train, evaluation, spec, MODEL, seed=7, threshold=0.5)


def test_same_seed_same_model(trained):
    spec, train, evaluation, first = trained
    second = train_candidate(train, evaluation, spec, MODEL, seed=7, threshold=0.5)
    assert first.metrics == second.metrics


def test_model_learns_something(trained):
    *_, candidate = trained
    assert candidate.metrics["roc_auc"] > 0.7  # the generator's signal is strong; a broken pipeline is near 0.5


def test_direction_more_support_calls_raise_churn_risk(trained):
    spec, _, evaluation, candidate = trained
    calm = evaluation.assign(support_calls=0)
    angry = evaluation.assign(support_calls=8)
    assert positive_scores(candidate.pipeline, angry, spec).mean() > positive_scores(candidate.pipeline, calm, spec).mean()


def test_id_time_and_target_are_never_features_and_column_order_does_not_matter(trained):
    spec, _, evaluation, candidate = trained
    assert {"customer_id", "snapshot_date", "churned"}.isdisjoint(spec.features)
    # Columns selected by name, not position: reversed columns plus a stray one score the same.
    shuffled = evaluation[list(reversed(evaluation.columns))].assign(stray=1.0)
    assert np.array_equal(positive_scores(candidate.pipeline, shuffled, spec), positive_scores(candidate.pipeline, evaluation, spec))


def test_decision_threshold_moves_accuracy_and_f1_but_not_roc_auc(trained):
    spec, _, evaluation, candidate = trained
    low = evaluate_model(candidate.pipeline, evaluation, spec, threshold=0.2)
    high = evaluate_model(candidate.pipeline, evaluation, spec, threshold=0.8)
    assert low["roc_auc"] == high["roc_auc"] == candidate.metrics["roc_auc"]
    assert low["f1"] != high["f1"] and low["accuracy"] != high["accuracy"]
    # a low threshold labels more rows positive: recall, hence F1 on this balanced-ish data, goes up
    assert low["f1"] > high["f1"]
    assert candidate.params["decision_threshold"] == 0.5


def test_concept_drift_batch_hurts_the_reference_model(trained, churn_dir):
    spec, _, _, candidate = trained
    drifted = read_table(churn_dir / "batch_03.parquet")
    assert evaluate_model(candidate.pipeline, drifted, spec, threshold=0.5)["roc_auc"] < candidate.metrics["roc_auc"] - 0.1


def test_recency_weights_give_recent_rows_their_share():
    ref_w, recent_w = recency_weights(6000, 1500, 0.8)
    assert abs(1500 * recent_w / (6000 * ref_w + 1500 * recent_w) - 0.8) < 1e-9
    assert abs((6000 * ref_w + 1500 * recent_w) / 7500 - 1.0) < 1e-9


def test_sample_weights_change_the_fit(trained):
    spec, train, evaluation, candidate = trained
    weighted = train.assign(**{SAMPLE_WEIGHT_COLUMN: (train["contract"] == "two-year") * 5.0 + 0.1})
    other = train_candidate(weighted, evaluation, spec, MODEL, seed=7, threshold=0.5)
    assert other.metrics != candidate.metrics


def test_features_inferred_for_an_unconfigured_csv():
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    settings = load_settings("configs/datasets/breast_cancer.yaml")
    spec = resolve_feature_spec(settings.dataset, frame)
    assert len(spec.numeric) == 30 and spec.categorical == [] and spec.target == "target"
    assert "target" not in spec.features and spec.ignored == []


def test_the_evaluation_digest_names_the_rows_not_the_index_or_the_length(churn_dir):
    from opsfabric.ml.training import evaluation_digest

    frame = read_table(churn_dir / "reference.parquet").head(200)
    same = frame.copy().set_axis(range(1000, 1200))
    number = frame.select_dtypes("number").columns[0]
    changed = frame.copy()
    changed.loc[changed.index[7], number] = frame[number].iloc[7] + 1  # one value of one row
    reordered = frame.iloc[::-1]
    assert evaluation_digest(same) == evaluation_digest(frame)
    assert evaluation_digest(changed) != evaluation_digest(frame)
    assert evaluation_digest(reordered) != evaluation_digest(frame)
    assert evaluation_digest(frame.rename(columns={frame.columns[0]: "renamed"})) != evaluation_digest(frame)
