"""The golden set's tune/holdout split: parsing errors name file, line and field; aggregates per split."""

from __future__ import annotations

import json
import math

import pytest

from opsfabric.rag.corpus import load_corpus
from opsfabric.rag.errors import GoldenSetError
from opsfabric.rag.evaluation import aggregate_by_split
from opsfabric.rag.golden import HOLDOUT, TUNE, items_in_split, prepare_golden_set, read_golden, read_golden_source

pytestmark = pytest.mark.unit

DOC = "Alpha beta gamma. The answer is forty-two."


def item(n: int, split: object = TUNE, **extra) -> dict:
    row = {"id": f"x{n}", "question": "What is the answer?", "reference_answer": "42", "doc_id": "a.txt",
           "passage": "The answer is forty-two.", "split": split}
    return row | extra


def write(path, rows) -> object:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_both_splits_are_read_into_the_items(tmp_path):
    items = read_golden_source(write(tmp_path / "g.jsonl", [item(1, TUNE), item(2, HOLDOUT), item(3, HOLDOUT)]))
    assert [i.split for i in items] == [TUNE, HOLDOUT, HOLDOUT]
    assert [i.id for i in items_in_split(items, HOLDOUT)] == ["x2", "x3"]
    assert [i.id for i in items_in_split(items, TUNE)] == ["x1"]
    assert len(items_in_split(items, None)) == 3


def test_missing_split_names_file_line_and_field(tmp_path):
    row = item(2)
    del row["split"]
    path = write(tmp_path / "g.jsonl", [item(1), row])
    with pytest.raises(GoldenSetError, match=r"g\.jsonl:2: missing or empty field\(s\) \['split'\]"):
        read_golden_source(path)


@pytest.mark.parametrize("value", ["", "  ", None])
def test_empty_split_is_an_error(tmp_path, value):
    path = write(tmp_path / "g.jsonl", [item(1, value)])
    with pytest.raises(GoldenSetError, match=r"g\.jsonl:1: missing or empty field\(s\) \['split'\]"):
        read_golden_source(path)


@pytest.mark.parametrize("value", ["test", "Holdout", "train", "tune "])
def test_unknown_split_value_names_file_line_field_and_allowed_values(tmp_path, value):
    path = write(tmp_path / "g.jsonl", [item(1), item(2), item(3, value)])
    with pytest.raises(GoldenSetError, match=rf"g\.jsonl:3: field 'split' is '{value}', expected one of \['tune', 'holdout'\]"):
        read_golden_source(path)


def test_non_string_split_is_an_error(tmp_path):
    path = write(tmp_path / "g.jsonl", [item(1, 1)])
    with pytest.raises(GoldenSetError, match=r"g\.jsonl:1: field\(s\) \['split'\] must be strings"):
        read_golden_source(path)


def test_unknown_split_name_in_a_filter_is_an_error(tmp_path):
    items = read_golden_source(write(tmp_path / "g.jsonl", [item(1)]))
    with pytest.raises(GoldenSetError, match="unknown golden split 'test'"):
        items_in_split(items, "test")


@pytest.fixture
def one_doc_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(DOC)
    return load_corpus(tmp_path / "corpus", ["**/*"], [], max_bytes=10_000)


def test_prepared_table_carries_the_split(tmp_path, one_doc_corpus):
    source = write(tmp_path / "g.jsonl", [item(1, TUNE), item(2, HOLDOUT)])
    out = prepare_golden_set(read_golden_source(source), one_doc_corpus, source, tmp_path / "prepared.parquet")
    assert [(i.id, i.split) for i in read_golden(out, source)] == [("x1", TUNE), ("x2", HOLDOUT)]


def test_a_prepared_table_without_split_is_refused_not_read_as_unsplit(tmp_path, one_doc_corpus):
    import pandas as pd

    source = write(tmp_path / "g.jsonl", [item(1)])
    out = prepare_golden_set(read_golden_source(source), one_doc_corpus, source, tmp_path / "prepared.parquet")
    pd.read_parquet(out).drop(columns=["split"]).to_parquet(out, index=False)  # as an older version wrote it
    with pytest.raises(GoldenSetError, match=r"prepared\.parquet: prepared golden table lacks column\(s\) \['split'\]"):
        read_golden(out, source)


def test_aggregates_are_overall_and_per_split():
    rows = [
        {"id": "t1", "split": TUNE, "mrr": 1.0, "judge": math.nan},
        {"id": "h1", "split": HOLDOUT, "mrr": 0.5, "judge": 1.0},
        {"id": "h2", "split": HOLDOUT, "mrr": 0.0, "judge": 0.0},
    ]
    scores = aggregate_by_split(rows)
    assert scores["mrr"] == pytest.approx(0.5)  # the unprefixed keys (gate, MLflow history) stay over all questions
    assert scores["tune.mrr"] == pytest.approx(1.0) and scores["holdout.mrr"] == pytest.approx(0.25)
    assert scores["tune.n_questions"] == 1 and scores["holdout.n_questions"] == 2
    assert scores["judge"] == pytest.approx(0.5) and scores["judge_nan_share"] == pytest.approx(1 / 3)
    assert math.isnan(scores["tune.judge"]) and scores["tune.judge_nan_share"] == 1.0
    assert "holdout.judge_nan_share" not in scores
    assert "n_questions" not in scores and not any(k.startswith("id") or k.endswith(".split") for k in scores)


def test_a_split_without_questions_has_no_keys_rather_than_zeros():
    scores = aggregate_by_split([{"id": "t1", "split": TUNE, "mrr": 1.0}])
    assert not any(k.startswith(f"{HOLDOUT}.") for k in scores)
    assert aggregate_by_split([]) == {}
