"""Quality floors on the shipped corpus and golden set, with the shipped parameters (params.yaml)."""

from __future__ import annotations

import pytest

from opsfabric.rag import steps, store
from opsfabric.rag.evaluation import evaluate_retrieval, should_go_live
from opsfabric.rag.golden import read_golden_source
from opsfabric.rag.retrieval import Retriever
from opsfabric.rag.settings import RagConfig
from opsfabric.settings import load_settings

pytestmark = pytest.mark.evals


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, embedder):
    state = tmp_path_factory.mktemp("evals")
    config = RagConfig(load_settings(state_dir=state, rag={"golden": {"prepared": str(state / "golden.parquet")}}))
    steps.prepare_golden(config)
    report = steps.ingest_corpus(config, embedder, show_progress=False)
    yield config, report
    store.close_qdrant(config)


def test_hybrid_retrieval_beats_bm25_and_dense_on_the_golden_set(shipped, embedder):
    config, report = shipped
    golden = read_golden_source(config.golden_source)
    retriever = Retriever(store.open_qdrant(config), report.collection, embedder, config.rag.retrieval)
    scores = {mode: evaluate_retrieval(retriever, golden, mode) for mode in ("bm25", "dense", "hybrid")}
    assert scores["hybrid"]["hit_at_5"] >= 0.95 and scores["hybrid"]["mrr"] >= 0.85, scores["hybrid"]
    assert scores["hybrid"]["mrr"] > max(scores["bm25"]["mrr"], scores["dense"]["mrr"]), scores
    assert scores["hybrid"]["hit_at_1"] > max(scores["bm25"]["hit_at_1"], scores["dense"]["hit_at_1"]), scores


def test_shipped_index_passes_the_shipped_gate_so_make_run_promotes_it(shipped, embedder):
    config, report = shipped
    result = steps.evaluate_collection(config, report.collection, embedder)
    decision = should_go_live(result.aggregates, config.rag.gate, candidate=report.collection)
    assert decision.approved, decision.reasons
    assert result.answer_method == "extractive" and not result.llm_judge
    assert result.aggregates["rouge_l"] > 0.2 and result.aggregates["context_recall"] >= 0.9
    assert len(result.rows) == len(read_golden_source(config.golden_source))
