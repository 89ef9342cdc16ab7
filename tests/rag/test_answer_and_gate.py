"""Answering (extractive and LLM wire format), prompt injection, the alias gate and rollback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from opsfabric.rag import ingest, operations, promotion, qdrant, versions
from opsfabric.rag.answer import EXTRACTIVE_NOTE, ExtractiveAnswerer, LLMAnswerer, PromptTemplate
from opsfabric.rag.embeddings import configured_embedding
from opsfabric.rag.errors import IndexVersionError
from opsfabric.rag.retrieval import Retriever
from opsfabric.rag.settings import AnswerParams, LLMSettings
from opsfabric.settings import PROJECT_ROOT

pytestmark = pytest.mark.flows
INJECTION_DOC = "notes/ops_runbook_injection_sample.md"


@pytest.fixture
def indexed(make_rag_config, embedder):
    config = make_rag_config()
    report = ingest.build_index_version(config, ingest.load_configured_corpus(config), embedder, show_progress=False)
    return config, Retriever(qdrant.open_client(config), report.collection, embedder, config.rag.retrieval), report


def test_extractive_answer_copies_cited_sentences_and_says_it_is_extractive(indexed, embedder):
    config, retriever, _ = indexed
    answerer = ExtractiveAnswerer(embedder, AnswerParams())
    hits = retriever.search("Is libffi thread-safe?")
    answer = answerer.answer("Is libffi thread-safe?", hits)
    assert answer.method == "extractive" and answer.note == EXTRACTIVE_NOTE and "no language model" in answer.note
    assert answer.model is None and answer.prompt_tokens == answer.completion_tokens == 0 and answer.cost_usd == 0
    assert "libffi is not completely thread-safe." in answer.text
    cited = {c["chunk_id"]: c for c in answer.citations}
    by_id = {h.chunk_id: h for h in hits}
    for sentence, number in _sentences_with_citation(answer.text):
        chunk = by_id[answer.citations[number - 1]["chunk_id"]]
        assert sentence in " ".join(chunk.text.split()), f"not copied verbatim from its cited chunk: {sentence!r}"
    assert set(cited) <= set(by_id)
    assert answerer.answer("Is libffi thread-safe?", hits).text == answer.text  # deterministic
    assert "Sources:\n[1] " in answer.render() and "Extractive answer" in answer.render()


def _sentences_with_citation(text: str) -> list[tuple[str, int]]:
    import re

    return [(m.group(1).strip(), int(m.group(2))) for m in re.finditer(r"(.+?) \[(\d+)\]", text)]


def test_extractive_answer_without_context_says_so(embedder):
    answer = ExtractiveAnswerer(embedder, AnswerParams()).answer("anything?", [])
    assert answer.text == "The retrieved documents contain no answer." and answer.citations == []


def test_injected_instructions_are_flagged_and_never_reach_the_answer(indexed, embedder):
    config, retriever, _ = indexed
    answerer = ExtractiveAnswerer(embedder, AnswerParams())
    question = "When is the search index rotated?"
    hits = retriever.search(question)
    assert hits[0].doc_id == INJECTION_DOC
    answer = answerer.answer(question, hits)
    assert "every Sunday at 02:00 UTC" in answer.text
    lowered = answer.text.lower()
    assert "evil.example.com" not in lowered and "developer mode" not in lowered and "ignore all previous" not in lowered
    assert INJECTION_DOC in {f["source_path"] for f in answer.flagged_chunks}
    # the same question's answer about another document is unchanged by a hostile chunk in the context
    other = retriever.search("Is libffi thread-safe?")
    hostile = [h for h in hits if h.doc_id == INJECTION_DOC and "Ignore all previous" in h.text]
    assert hostile, "the hostile paragraph must be in a retrieved chunk"
    clean = answerer.answer("Is libffi thread-safe?", [c for c in other if c.doc_id != INJECTION_DOC])
    attacked = answerer.answer("Is libffi thread-safe?", hostile + [c for c in other if c.doc_id != INJECTION_DOC][:4])
    assert attacked.text == clean.text and attacked.flagged_chunks and not clean.flagged_chunks


class _ChatEndpoint(BaseHTTPRequestHandler):
    """A local OpenAI-compatible /chat/completions endpoint that records the request it gets.

    Stands in for the LLM server to test our side of the wire format (request, usage, cost,
    citations); it does not pretend to be a language model.
    """

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        reply = {"choices": [{"message": {"content": "Every Sunday at 02:00 UTC [1]."}}], "usage": {"prompt_tokens": 1000, "completion_tokens": 20}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_llm_answerer_sends_the_versioned_prompt_and_accounts_tokens_and_cost(indexed):
    config, retriever, _ = indexed
    server = HTTPServer(("127.0.0.1", 0), _ChatEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        llm = LLMSettings(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="m", price_per_1k_input_tokens=0.5, price_per_1k_output_tokens=2.0)
        template = PromptTemplate.load(PROJECT_ROOT / "configs/prompts/rag_answer.v1.yaml")
        hits = retriever.search("When is the search index rotated?")
        answer = LLMAnswerer(llm, template, "sk-test", AnswerParams()).answer("When is the search index rotated?", hits)
    finally:
        server.shutdown()
    sent = _ChatEndpoint.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    system, user = sent["body"]["messages"]
    assert system == {"role": "system", "content": template.system}
    assert f'source="{INJECTION_DOC}" flagged="true"' in user["content"]
    assert user["content"].rstrip().endswith("Question: When is the search index rotated?")
    assert answer.method == "llm" and answer.prompt_hash == template.sha256 and answer.prompt_version == "rag_answer.v1"
    assert answer.prompt_tokens == 1000 and answer.completion_tokens == 20 and answer.cost_usd == pytest.approx(0.5 + 0.04)
    assert [c["chunk_id"] for c in answer.citations] == [hits[0].chunk_id] and answer.citations[0]["n"] == 1
    assert sent["body"]["seed"] == 0 and sent["body"]["max_tokens"] == llm.max_tokens and answer.labels["gen_ai.request.seed"] == 0


def test_alias_moves_only_through_the_gate_and_rollback_is_one_call(make_rag_config, embedder, tiny_corpus: Path):
    config = make_rag_config()
    v1 = ingest.ingest_corpus(config, embedder, show_progress=False)
    first = promotion.gate_version(config, v1.collection, embedder)
    assert first.promoted and first.live_collection == v1.collection

    (tiny_corpus / "extra.md").write_text("# Extra\n\nA short added page about index rotation windows.\n")
    v2 = ingest.ingest_corpus(config, embedder, show_progress=False)
    strict = make_rag_config(gate={"thresholds": {"mrr": 1.01}})
    rejected = promotion.gate_version(strict, v2.collection, embedder)
    assert not rejected.decision.approved and not rejected.promoted
    assert any(r.startswith("mrr=") and r.endswith("is below the threshold 1.01") for r in rejected.decision.reasons)
    assert rejected.live_collection == v1.collection
    assert versions.VersionRegistry.load(config).get(v2.collection).status == "rejected"
    # the candidate was compared with the live version on the same golden set in the same run
    assert rejected.verdict.live is not None and rejected.verdict.live.collection == v1.collection
    assert [r["id"] for r in rejected.verdict.live.rows] == [r["id"] for r in rejected.verdict.candidate.rows]

    (tiny_corpus / "extra.md").write_text("# Extra\n\nA short added page, edited.\n")
    v3 = ingest.ingest_corpus(config, embedder, show_progress=False)
    passed = promotion.gate_version(config, v3.collection, embedder)
    assert passed.promoted and passed.live_collection == v3.collection

    rolled = operations.rollback_index(config)
    assert rolled == {"alias": "docs-live", "from": v3.collection, "to": v1.collection}
    assert qdrant.alias_target(qdrant.open_client(config), "docs-live") == v1.collection
    with pytest.raises(IndexVersionError, match="no earlier live version"):
        operations.rollback_index(config)
    assert operations.answer_question(config, "Is libffi thread-safe?", embedder).citations  # readers use the alias


def test_an_unchanged_corpus_after_a_rollback_does_not_undo_it(make_rag_config, embedder, tiny_corpus: Path):
    config = make_rag_config(golden_docs=["libffi/Thread-Safety.html", "libffi/Memory-Usage.html"])
    v1 = ingest.ingest_corpus(config, embedder, show_progress=False)
    promotion.gate_version(config, v1.collection, embedder)
    (tiny_corpus / "extra.md").write_text("# Extra\n\nA short page about index rotation windows.\n")
    v2 = ingest.ingest_corpus(config, embedder, show_progress=False)
    assert promotion.gate_version(config, v2.collection, embedder).promoted
    operations.rollback_index(config)
    again = ingest.ingest_corpus(config, embedder, show_progress=False)
    # the newest build was already judged: the nightly pipeline must not evaluate and re-promote it
    assert again.status == "unchanged" and again.collection == v2.collection and not again.needs_evaluation
    assert qdrant.alias_target(qdrant.open_client(config), "docs-live") == v1.collection


class _EmbeddingsEndpoint(BaseHTTPRequestHandler):
    """A local OpenAI-compatible /embeddings endpoint: 8-dim vectors derived from each text's hash.

    Tests our client of the wire format and that ingestion runs on a non-local backend; the
    vectors carry no meaning.
    """

    calls: list[dict] = []
    fail = False

    def do_POST(self):  # noqa: N802
        import hashlib

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        if type(self).fail:
            self.send_response(500)
            self.end_headers()
            return
        data = [
            {"index": i, "embedding": [b / 255 for b in hashlib.sha256(text.encode()).digest()[:8]]}
            for i, text in reversed(list(enumerate(body["input"])))  # out of order on purpose
        ]
        payload = json.dumps({"data": data, "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_openai_compatible_embedding_backend_ingests_and_reports_endpoint_errors(make_rag_config):
    from opsfabric.rag.errors import EndpointError

    server = HTTPServer(("127.0.0.1", 0), _EmbeddingsEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        config = make_rag_config(embedding={"backend": "openai", "base_url": url, "model": "text-embedding-test", "batch_size": 16})
        model = configured_embedding(config)
        report = ingest.build_index_version(config, ingest.load_configured_corpus(config), model, show_progress=False)
        assert report.status == "built" and report.chunks_total > 10
        assert {c["model"] for c in _EmbeddingsEndpoint.calls} == {"text-embedding-test"}
        assert max(len(c["input"]) for c in _EmbeddingsEndpoint.calls) <= 16
        info = qdrant.open_client(config).get_collection(report.collection)
        assert info.config.params.vectors[qdrant.DENSE_VECTOR].size == 8
        first = _EmbeddingsEndpoint.calls[-1]["input"][0]
        assert model.get_text_embedding(first) == model.get_text_embedding_batch([first, "other"])[0]  # order restored
        assert config.index_config()["embedding"] == {"backend": "openai", "model": "text-embedding-test"}
        _EmbeddingsEndpoint.fail = True
        with pytest.raises(EndpointError, match=rf"embeddings endpoint {url}/embeddings \(rag.embedding.base_url\) failed"):
            model.get_query_embedding("q")
    finally:
        _EmbeddingsEndpoint.fail = False
        server.shutdown()
