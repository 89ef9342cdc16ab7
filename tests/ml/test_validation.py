"""Every bad input gets an error that names the file, the column and the rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opsfabric.ml.dataset import read_table, resolve_feature_spec
from opsfabric.ml.errors import DataLoadError, DataValidationError
from opsfabric.ml.validation import build_schema, raise_for_failures, validate_table
from opsfabric.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def contract(churn_dir):
    settings = load_settings()
    reference = read_table(churn_dir / "reference.parquet")
    spec = resolve_feature_spec(settings.dataset, reference)
    return reference, spec, build_schema(reference, spec, settings.dataset), settings.ml.validation


def _validate(frame, contract, **kwargs):
    _, _, schema, params = contract
    report = validate_table(frame, schema, params, source="batch.csv", **kwargs)
    return report


def _error(frame, contract, **kwargs) -> str:
    report = _validate(frame, contract, **kwargs)
    with pytest.raises(DataValidationError) as info:
        raise_for_failures(report)
    return str(info.value)


def test_clean_reference_passes(contract):
    reference = contract[0]
    report = _validate(reference, contract)
    assert report.passed, [c.describe() for c in report.failures]


def test_missing_column_is_named(contract):
    message = _error(contract[0].drop(columns=["tenure_months"]), contract)
    assert "batch.csv" in message and "'tenure_months'" in message and "required_column" in message


def test_wrong_dtype_names_column_value_and_row(contract):
    frame = contract[0].copy()
    frame["monthly_charges"] = frame["monthly_charges"].astype(object)
    frame.loc[7, "monthly_charges"] = "seventy"
    message = _error(frame, contract)
    assert "'monthly_charges'" in message and "dtype" in message and "'seventy'" in message and "rows 7" in message


def test_all_nan_column(contract):
    frame = contract[0].copy()
    frame["age"] = np.nan
    message = _error(frame, contract)
    assert "'age'" in message and "all_missing" in message


def test_unknown_category_names_value(contract):
    frame = contract[0].copy()
    frame.loc[3, "contract"] = "lifetime"
    message = _error(frame, contract)
    assert "'contract'" in message and "allowed_categories" in message and "lifetime" in message and "rows 3" in message


def test_missing_labels_and_label_column(contract):
    frame = contract[0].copy()
    frame.loc[[2, 5], "churned"] = np.nan
    message = _error(frame, contract)
    assert "'churned'" in message and "label_present" in message and "rows 2, 5" in message
    message = _error(contract[0].drop(columns=["churned"]), contract)
    assert "'churned'" in message and "required_column" in message


def test_unlabelled_batch_passes_when_labels_not_required(contract):
    report = _validate(contract[0].drop(columns=["churned"]), contract, require_label=False)
    assert report.passed


def test_out_of_range_and_duplicates(contract):
    frame = contract[0].copy()
    frame.loc[4, "age"] = 300
    frame = pd.concat([frame, frame.iloc[:200]], ignore_index=True)
    message = _error(frame, contract)
    assert "'age'" in message and "range" in message and "duplicate_share" in message


def test_too_few_rows(contract):
    message = _error(contract[0].head(10), contract)
    assert "row_count" in message and "10 rows" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataLoadError, match=r"empty\.csv: file is empty"):
        read_table(path)


def test_header_only_file_fails_row_count(tmp_path, contract):
    path = tmp_path / "header.csv"
    contract[0].head(0).to_csv(path, index=False)
    message = _error(read_table(path), contract)
    assert "row_count" in message and "0 rows" in message


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(DataLoadError, match=r"broken\.parquet: cannot be read as parquet"):
        read_table(path)


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataLoadError, match="nope.csv: file not found"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(DataLoadError, match="unsupported file type '.xlsx'"):
        read_table(tmp_path / "data.xlsx")
