"""The shipped corpus and golden QA set: formats, licences recorded, passages really in the corpus, splits."""

from __future__ import annotations

import json
import re

import pytest

from opsfabric.rag.corpus import load_corpus
from opsfabric.rag.errors import GoldenSetError
from opsfabric.rag.golden import HOLDOUT, SPLITS, TUNE, items_in_split, read_golden_source, squash, validate_against_corpus
from opsfabric.rag.keyword import tokenize
from tests.rag.conftest import CORPUS, GOLDEN

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(CORPUS, ["**/*"], ["SOURCES.md"], max_bytes=5_000_000)


@pytest.fixture(scope="module")
def golden():
    return read_golden_source(GOLDEN)  # raises, naming file:line and field, on a missing or unknown split


def test_corpus_has_every_format_and_no_bad_document(corpus):
    assert not corpus.bad_documents, corpus.bad_documents
    assert {d.format for d in corpus.documents} == {"markdown", "text", "html", "pdf"}
    assert 15 <= len(corpus.documents) <= 40


def test_every_document_has_its_source_and_licence_recorded(corpus):
    sources = (CORPUS / "SOURCES.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \|[^|]*\| ([^|]+) \|", sources, re.M)}
    assert set(rows) == {d.doc_id for d in corpus.documents}
    assert all(rows[d].strip() for d in rows)


def test_golden_set_passages_are_in_the_corpus_and_ids_unique(corpus, golden):
    assert len({i.id for i in golden}) == len(golden)
    validate_against_corpus(golden, corpus, GOLDEN)  # raises, naming the item, if a passage is missing
    assert len({i.doc_id for i in golden}) >= 12


def test_every_item_has_a_split_and_the_holdout_is_big_and_spread(corpus, golden):
    raw = [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]
    assert all(row.get("split") in SPLITS for row in raw), [row["id"] for row in raw if row.get("split") not in SPLITS]
    tune, holdout = items_in_split(golden, TUNE), items_in_split(golden, HOLDOUT)
    assert len(tune) + len(holdout) == len(golden)
    assert len(tune) >= 30 and len(holdout) >= 30, (len(tune), len(holdout))
    assert all(re.fullmatch(r"h\d{2,}", i.id) for i in holdout), [i.id for i in holdout if not re.fullmatch(r"h\d{2,}", i.id)]
    formats = {d.doc_id: d.format for d in corpus.documents}
    assert {formats[i.doc_id] for i in holdout} == {"markdown", "text", "html", "pdf"}
    assert len({i.doc_id for i in holdout}) >= 15


def test_holdout_does_not_reuse_a_tune_passage_or_question(golden):
    """The same passage (or question) in both splits would carry tuning into the holdout figures."""
    tune = items_in_split(golden, TUNE)
    for item in items_in_split(golden, HOLDOUT):
        passage = squash(item.passage).lower()
        for other in tune:
            if other.doc_id == item.doc_id:
                theirs = squash(other.passage).lower()
                assert passage not in theirs and theirs not in passage, (item.id, other.id)
        assert squash(item.question).lower() not in {squash(t.question).lower() for t in tune}, item.id


def _longest_common_word_run(a: str, b: str) -> int:
    a_words, b_words = re.findall(r"[a-z0-9_]+", a.lower()), re.findall(r"[a-z0-9_]+", b.lower())
    best = 0
    for i in range(len(a_words)):
        for j in range(len(b_words)):
            k = 0
            while i + k < len(a_words) and j + k < len(b_words) and a_words[i + k] == b_words[j + k]:
                k += 1
            best = max(best, k)
    return best


def test_holdout_questions_paraphrase_their_passage(golden):
    """A question that copies its passage's wording flatters keyword search: holdout questions may share
    at most 5 consecutive words with the passage, and on average at most half of their search terms."""
    holdout = items_in_split(golden, HOLDOUT)
    copied = [(i.id, n) for i in holdout if (n := _longest_common_word_run(i.question, i.passage)) > 5]
    assert not copied, copied
    shares = [len(set(tokenize(i.question)) & set(tokenize(i.passage))) / max(len(set(tokenize(i.question))), 1) for i in holdout]
    assert sum(shares) / len(shares) <= 0.5, sum(shares) / len(shares)


def test_golden_validation_names_the_item_whose_passage_is_missing(corpus, tmp_path):
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines()[:2]]
    rows[1]["passage"] = "a sentence that is in no document"
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(GoldenSetError, match=rf"{rows[1]['id']}: passage not found in {rows[1]['doc_id']}"):
        validate_against_corpus(read_golden_source(path), corpus, path)
    path.write_text('{"id": "x", "question": "q"}\n')
    with pytest.raises(GoldenSetError, match=r"g\.jsonl:1: missing or empty field\(s\) \['reference_answer', 'doc_id', 'passage', 'split'\]"):
        read_golden_source(path)
