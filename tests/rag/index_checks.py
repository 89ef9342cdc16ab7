"""Checks on built index versions shared by the ingest, race and crash tests."""

from __future__ import annotations

from opsfabric.rag import ingest, qdrant, versions
from opsfabric.rag.ingest import IngestReport


def build(config, embedder):
    return ingest.build_index_version(config, ingest.load_configured_corpus(config), embedder, show_progress=False)


def points(config, collection: str) -> dict[str, tuple[str, int, str]]:
    """point id -> (doc id, chunk index, content hash) of every point in the collection."""
    client = qdrant.open_client(config)
    return {pid: (p["doc_id"], p["chunk_index"], p["content_hash"]) for pid, p in qdrant.scroll_payloads(client, collection)}


def assert_one_copy_per_chunk(config, collection: str) -> None:
    found = points(config, collection)
    keys = [(doc, index) for doc, index, _ in found.values()]
    assert len(keys) == len(set(keys)), "a chunk is stored twice"
    assert qdrant.open_client(config).count(collection, exact=True).count == len(found)


def assert_resumes_to_a_fresh_build(config, embedder, make_rag_config, interrupted: str) -> IngestReport:
    """The next build resumes ``interrupted`` and ends with one copy of every chunk, as a fresh build would."""
    resumed = build(config, embedder)
    assert resumed.status == "resumed" and resumed.collection == interrupted
    assert_one_copy_per_chunk(config, resumed.collection)
    ids = set(points(config, resumed.collection))
    qdrant.close_client(config)
    assert ids == set(fresh_build_ids(make_rag_config, embedder, "fresh"))
    assert versions.VersionRegistry.load(config).get(interrupted).status == "built"
    return resumed


def fresh_build_ids(make_rag_config, embedder, state: str) -> dict:
    """Point ids of a from-scratch build of the current corpus in a separate state folder."""
    config = make_rag_config(state)
    report = build(config, embedder)
    ids = points(config, report.collection)
    qdrant.close_client(config)
    return ids
