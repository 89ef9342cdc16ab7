"""Data tier: the generator is deterministic and the batches drift the way the scenario says."""

from __future__ import annotations

import pytest

from opsfabric.ml.datagen import generate_churn_batches
from opsfabric.ml.dataset import file_md5, read_table

pytestmark = pytest.mark.data


def test_same_seed_same_bytes(tmp_path, churn_dir):
    from tests.ml.conftest import SMALL

    generate_churn_batches(tmp_path, **SMALL)
    for name in ["reference", "batch_01", "batch_02", "batch_03", "batch_04"]:
        assert file_md5(tmp_path / f"{name}.parquet") == file_md5(churn_dir / f"{name}.parquet")


def test_covariate_drift_batch_shifts_prices_and_contracts(churn_dir):
    reference = read_table(churn_dir / "reference.parquet")
    drifted = read_table(churn_dir / "batch_02.parquet")
    assert drifted.monthly_charges.mean() > reference.monthly_charges.mean() + 15
    assert (drifted.contract == "month-to-month").mean() > (reference.contract == "month-to-month").mean() + 0.15


def test_concept_drift_batch_keeps_features_changes_labels(churn_dir):
    reference = read_table(churn_dir / "reference.parquet")
    concept = read_table(churn_dir / "batch_03.parquet")
    assert abs(concept.monthly_charges.mean() - reference.monthly_charges.mean()) < 3
    two_year_ref = reference[reference.contract == "two-year"].churned.mean()
    two_year_now = concept[concept.contract == "two-year"].churned.mean()
    assert two_year_now > two_year_ref + 0.2  # loyal customers now leave
