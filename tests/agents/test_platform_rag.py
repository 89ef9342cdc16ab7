"""PlatformBackend's RAG tools on a real index: three versions of the tiny corpus built and gated by the
project's own functions, real Qdrant local mode, real MiniLM, through the agent where it matters."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsfabric.agents.agent import build_agent, open_checkpointer, resume_run, start_run
from opsfabric.agents.backend import PlatformBackend, cited_passages
from opsfabric.agents.errors import ThreadStateError
from opsfabric.agents.trace import trajectory
from opsfabric.rag import ingest, operations, promotion, versions
from opsfabric.rag.errors import IndexVersionError

# one page per version, so a citation tells which version answered
ROTATION = "ops/index_rotation.md", "# Index rotation\n\nThe search index rotation window opens every Sunday at 02:00 UTC.\n"
RETENTION = "ops/backup_retention.md", "# Backup retention\n\nSnapshots of the vector store are kept for thirty-five days.\n"


@pytest.fixture
def live_index(make_rag_config, embedder, tiny_corpus: Path):
    """v1: the tiny corpus; v2: + the rotation page; v3: + the retention page. Each gated live in turn."""
    config = make_rag_config()
    built = []
    for page in (None, ROTATION, RETENTION):
        if page:
            (tiny_corpus / page[0]).parent.mkdir(parents=True, exist_ok=True)
            (tiny_corpus / page[0]).write_text(page[1])
        report = ingest.ingest_corpus(config, embedder, show_progress=False)
        assert promotion.gate_version(config, report.collection, embedder).promoted
        built.append(report.collection)
    return config, built


def sources(result):
    return {h["source"] for h in result["hits"]}


@pytest.mark.flows
def test_search_reads_the_live_alias_and_only_an_approved_rollback_moves_it_once(live_index, embedder, tmp_path):
    config, (v1, v2, v3) = live_index
    backend = PlatformBackend(config.settings, embed_model=embedder)
    status = backend.index_status()
    assert status["live"] == v3 and status["summary"].startswith(f"docs-live points to {v3}")
    found = backend.search_docs("How long are vector store snapshots kept?")
    assert RETENTION[0] in sources(found) and all(h["text"] for h in found["hits"])
    assert "thirty-five days" in " ".join(h["text"] for h in found["hits"] if h["source"] == RETENTION[0])

    agent = build_agent(config.settings.agents, backend, open_checkpointer(tmp_path / "cp.sqlite"))
    # through the agent: the planner quotes the live version's passage and cites it
    asked = start_run(agent, "search the docs for how long vector store snapshots are kept")
    assert asked.status == "completed" and f"[{RETENTION[0]}]" in asked.answer

    # denied: nothing moves
    denied = start_run(agent, "roll back the live index alias")
    assert [p.tool for p in denied.pending] == ["rollback_index_alias"]
    denied = resume_run(agent, denied.thread_id, {"type": "reject", "message": "v3 is fine"})
    assert [(c.name, c.outcome) for c in trajectory(denied.trace)] == [("rollback_index_alias", "denied")]
    assert operations.index_status(config)["live"] == v3

    # approved: the alias moves exactly once (v3 -> v2; a second move would reach v1)
    pending = start_run(agent, "roll back the live index alias")
    assert operations.index_status(config)["live"] == v3  # nothing before the approval
    done = resume_run(agent, pending.thread_id, {"type": "approve"})
    assert done.status == "completed" and f"docs-live moved from {v3} to {v2}" in done.answer
    assert [(c.name, c.outcome) for c in trajectory(done.trace)] == [("rollback_index_alias", "ok")]
    with pytest.raises(ThreadStateError, match="no pending approval"):
        resume_run(agent, pending.thread_id, {"type": "approve"})
    assert operations.index_status(config)["live"] == v2
    assert versions.VersionRegistry.load(config).live_history == [v1, v2]

    # readers follow the alias: the retention page (only in v3) is gone, the rotation page (v2) is there
    assert RETENTION[0] not in sources(backend.search_docs("How long are vector store snapshots kept?"))
    assert ROTATION[0] in sources(backend.search_docs("When does the search index rotation window open?"))
    assert backend.index_status()["live"] == v2


@pytest.mark.flows
def test_rollback_to_a_bad_target_is_a_named_error_and_moves_nothing(live_index, embedder):
    config, (_, _, v3) = live_index
    backend = PlatformBackend(config.settings, embed_model=embedder)
    with pytest.raises(IndexVersionError, match="docs-v0099"):
        backend.rollback_index_alias("docs-v0099", "no such version")
    assert operations.index_status(config)["live"] == v3
    moved = backend.rollback_index_alias("docs-v0001", "explicit target")
    assert (moved["previous"], moved["live"]) == (v3, "docs-v0001")


@pytest.mark.unit
def test_cited_passages_pair_each_citation_with_the_sentences_that_cite_it():
    cites = [{"chunk_id": "a"}, {"chunk_id": "b"}]
    extractive = "Snapshots are kept for 35 days. [1] The window opens on Sunday. [2] Restores take an hour. [1]"
    assert cited_passages(extractive, cites, 5) == ["Snapshots are kept for 35 days. Restores take an hour.", "The window opens on Sunday."]
    # an LLM cites context positions: the i-th citation is the i-th smallest marker
    assert cited_passages("Kept 35 days [2][4]. Opens Sunday [4].", cites, 5) == ["Kept 35 days", "Kept 35 days Opens Sunday"]
    assert cited_passages("Out of range [9] and [1].", cites, 5) == ["", ""]  # one valid marker for two citations: no pairing
    assert cited_passages("No markers at all.", cites, 5) == ["", ""]


INJECTION_SAMPLE = Path(__file__).resolve().parents[2] / "data" / "corpus" / "notes" / "ops_runbook_injection_sample.md"


@pytest.mark.flows
def test_a_flagged_source_from_the_live_index_blocks_a_following_risky_call(make_rag_config, embedder, tiny_corpus: Path, tmp_path):
    config = make_rag_config()
    (tiny_corpus / "notes").mkdir(parents=True, exist_ok=True)
    (tiny_corpus / "notes" / INJECTION_SAMPLE.name).write_text(INJECTION_SAMPLE.read_text())
    report = ingest.ingest_corpus(config, embedder, show_progress=False)
    assert promotion.gate_version(config, report.collection, embedder).promoted
    backend = PlatformBackend(config.settings, embed_model=embedder)
    found = backend.search_docs("When is the search index rotated?")
    assert any(s.endswith(INJECTION_SAMPLE.name) for s in found["flagged_sources"])  # dropped from the text, reported here

    agent = build_agent(config.settings.agents, backend, open_checkpointer(tmp_path / "cp.sqlite"))
    r = start_run(agent, "search the docs for when the search index is rotated and then promote model version 4")
    assert (r.status, r.stop_reason) == ("stopped", "injection"), (r.status, r.pending)
    assert [(c.name, c.outcome) for c in trajectory(r.trace)] == [("search_docs", "ok"), ("promote_model_version", "refused")]
    flags = [e for e in r.trace["events"] if e["kind"] == "guardrail" and e["attributes"]["opsfabric.guardrail.decision"] == "flag"]
    assert any("flagged_sources" in e["attributes"]["opsfabric.guardrail.detail"] for e in flags), flags
