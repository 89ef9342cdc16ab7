"""The gates are pure functions: each must be able to say no, with its reasons."""

from __future__ import annotations

import math

import pytest

from opsfabric.ml.gate import DriftSummary, should_promote, should_retrain
from opsfabric.settings import DriftParams, GateParams

pytestmark = pytest.mark.unit
POLICY = GateParams(metric="roc_auc", min_improvement=0.01, floor=0.7)


def test_first_model_needs_floor():
    assert should_promote(0.75, None, POLICY).approved
    decision = should_promote(0.65, None, POLICY)
    assert not decision.approved and "below the floor" in decision.reasons[0]


def test_candidate_must_beat_champion_by_margin():
    assert should_promote(0.811, 0.80, POLICY).approved
    decision = should_promote(0.805, 0.80, POLICY)
    assert not decision.approved and "+0.0050" in decision.reasons[0]
    assert not should_promote(0.79, 0.80, POLICY).approved


def test_beating_a_collapsed_champion_is_not_enough():
    decision = should_promote(0.45, 0.30, POLICY)
    assert not decision.approved and "floor" in decision.reasons[0]


def test_nan_never_promotes():
    assert not should_promote(math.nan, None, POLICY).approved


def test_retrain_on_data_drift_or_performance_drop():
    policy = DriftParams(drift_share_threshold=0.3, performance_drop_threshold=0.03)
    quiet = DriftSummary(0.1, ["age"], "roc_auc", 0.80, 0.79)
    assert not should_retrain(quiet, policy).approved
    drifted = DriftSummary(0.4, ["age", "contract"], "roc_auc", 0.80, 0.79)
    decision = should_retrain(drifted, policy)
    assert decision.approved and "age, contract" in decision.reasons[0]
    dropped = DriftSummary(0.0, [], "roc_auc", 0.80, 0.70)
    decision = should_retrain(dropped, policy)
    assert decision.approved and "performance drop" in decision.reasons[0]


def test_unlabelled_batch_says_performance_not_checked():
    policy = DriftParams()
    decision = should_retrain(DriftSummary(0.0, [], "roc_auc"), policy)
    assert not decision.approved and any("not checked" in r for r in decision.reasons)
