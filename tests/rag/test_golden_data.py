"""The shipped corpus and golden QA set: formats, licences recorded, passages really in the corpus."""

from __future__ import annotations

import json
import re

import pytest

from opsfabric.rag.corpus import load_corpus
from opsfabric.rag.golden import read_golden_source, validate_against_corpus
from opsfabric.rag.errors import GoldenSetError
from tests.rag.conftest import CORPUS, GOLDEN

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(CORPUS, ["**/*"], ["SOURCES.md"], max_bytes=5_000_000)


def test_corpus_has_every_format_and_no_bad_document(corpus):
    assert not corpus.bad_documents, corpus.bad_documents
    assert {d.format for d in corpus.documents} == {"markdown", "text", "html", "pdf"}
    assert 15 <= len(corpus.documents) <= 40


def test_every_document_has_its_source_and_licence_recorded(corpus):
    sources = (CORPUS / "SOURCES.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \|[^|]*\| ([^|]+) \|", sources, re.M)}
    assert set(rows) == {d.doc_id for d in corpus.documents}
    assert all(rows[d].strip() for d in rows)


def test_golden_set_has_30_questions_whose_passages_are_in_the_corpus(corpus):
    items = read_golden_source(GOLDEN)
    assert len(items) >= 30 and len({i.id for i in items}) == len(items)
    validate_against_corpus(items, corpus, GOLDEN)  # raises, naming the item, if a passage is missing
    assert len({i.doc_id for i in items}) >= 12


def test_golden_validation_names_the_item_whose_passage_is_missing(corpus, tmp_path):
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines()[:2]]
    rows[1]["passage"] = "a sentence that is in no document"
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(GoldenSetError, match=rf"{rows[1]['id']}: passage not found in {rows[1]['doc_id']}"):
        validate_against_corpus(read_golden_source(path), corpus, path)
    path.write_text('{"id": "x", "question": "q"}\n')
    with pytest.raises(GoldenSetError, match=r"g\.jsonl:1: missing or empty field\(s\) \['reference_answer', 'doc_id', 'passage'\]"):
        read_golden_source(path)
