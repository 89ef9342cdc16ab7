"""Ingestion on real Qdrant local mode with real MiniLM: incremental, versioned, crash-safe, locked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsfabric.rag import ingest, qdrant, versions
from opsfabric.rag.errors import CorpusError
from opsfabric.settings import PROJECT_ROOT
from tests.rag.index_checks import assert_one_copy_per_chunk, assert_resumes_to_a_fresh_build, build, fresh_build_ids, points

pytestmark = pytest.mark.flows


def test_rerun_on_unchanged_corpus_embeds_nothing(make_rag_config, embedder):
    config = make_rag_config()
    first = build(config, embedder)
    assert first.status == "built" and first.chunks_embedded == first.chunks_total > 10
    assert sorted(first.documents_added) == sorted(d.doc_id for d in ingest.load_configured_corpus(config).documents)
    second = build(config, embedder)
    assert second.status == "unchanged" and second.chunks_embedded == 0 and second.collection == first.collection
    assert [v.collection for v in versions.VersionRegistry.load(config).versions] == [first.collection]
    payload = next(iter(qdrant.scroll_payloads(qdrant.open_client(config), first.collection)))[1]
    assert {"source_path", "title", "content_hash", "ingested_at", "pipeline_version", "chunk_index"} <= set(payload)


def test_add_change_delete_builds_a_new_version_equal_to_a_fresh_build(make_rag_config, embedder, tiny_corpus: Path):
    config = make_rag_config()
    v1 = build(config, embedder)
    v1_points = points(config, v1.collection)
    (tiny_corpus / "python/zen_of_python.txt").write_text("The Zen of Python, abridged.\n\nBeautiful is better than ugly. Readability counts.\n")
    (tiny_corpus / "libffi/Memory-Usage.html").unlink()
    (tiny_corpus / "new.md").write_text("# New page\n\nQdrant aliases let readers switch collections atomically.\n")
    v2 = build(config, embedder)
    assert v2.status == "built" and v2.base_collection == v1.collection and v2.collection != v1.collection
    assert v2.documents_added == ["new.md"] and v2.documents_changed == ["python/zen_of_python.txt"]
    assert v2.documents_removed == ["libffi/Memory-Usage.html"]
    assert v2.chunks_copied == len(v1_points)
    v2_points = points(config, v2.collection)
    # only the added and changed documents were embedded
    assert v2.chunks_embedded == sum(1 for doc, _, _ in v2_points.values() if doc in {"new.md", "python/zen_of_python.txt"})
    assert not {doc for doc, _, _ in v2_points.values()} & {"libffi/Memory-Usage.html"}
    assert points(config, v1.collection) == v1_points, "the previous version must stay intact (rollback target)"
    qdrant.close_client(config)
    assert set(v2_points) == set(fresh_build_ids(make_rag_config, embedder, "fresh"))


def vectors(config, collection: str) -> dict[str, list[float]]:
    """point id -> dense vector of every point in the collection."""
    return {str(p.id): p.vector[qdrant.DENSE_VECTOR] for p in qdrant.iter_points(qdrant.open_client(config), collection, with_vectors=True)}


def test_an_edited_document_re_embeds_only_chunks_whose_text_changed(make_rag_config, embedder, tiny_corpus: Path):
    import numpy as np

    config = make_rag_config()
    v1 = build(config, embedder)
    doc = "http/requests_README.md"
    before = sum(1 for d, _, _ in points(config, v1.collection).values() if d == doc)
    assert before >= 3, "the test needs a document of several chunks"
    path = tiny_corpus / doc
    path.write_text(path.read_text(encoding="utf-8") + "\n\nA paragraph appended at the end of the document.\n", encoding="utf-8")
    v2 = build(config, embedder)
    after = sum(1 for d, _, _ in points(config, v2.collection).values() if d == doc)
    assert v2.documents_changed == [doc]
    assert v2.chunks_embedded + v2.chunks_reused == after
    assert 1 <= v2.chunks_embedded < after and v2.chunks_reused >= after - 2
    reused = vectors(config, v2.collection)
    qdrant.close_client(config)
    fresh_config = make_rag_config("fresh")
    fresh = vectors(fresh_config, build(fresh_config, embedder).collection)
    assert set(reused) == set(fresh)
    for pid, vector in fresh.items():  # a reused vector is the one a fresh build computes
        assert np.allclose(reused[pid], vector, atol=1e-5), pid


def test_each_chunk_keyword_vector_carries_its_own_document_title(make_rag_config, embedder, tmp_path: Path):
    from opsfabric.rag.keyword import term_index

    corpus = tmp_path / "shared"
    corpus.mkdir()
    body = "\n\n".join(f"Paragraph {i} of a licence text that both documents share word for word." for i in range(30))
    (corpus / "a.md").write_text(f"# Alpha Zebra\n\n{body}\n")
    (corpus / "b.md").write_text(f"# Beta Quokka\n\n{body}\n")
    config = make_rag_config(corpus={"path": str(corpus)})
    report = build(config, embedder)
    client = qdrant.open_client(config)
    zebra, quokka = term_index("zebra"), term_index("quokka")
    seen = {"a.md": 0, "b.md": 0}
    for point in qdrant.iter_points(client, report.collection, with_vectors=True):
        indices = set(point.vector[qdrant.SPARSE_VECTOR].indices)
        own, other = (zebra, quokka) if point.payload["doc_id"] == "a.md" else (quokka, zebra)
        assert own in indices and other not in indices, point.payload["doc_id"]
        seen[point.payload["doc_id"]] += 1
    assert min(seen.values()) >= 2  # several chunks of identical text in each document


def test_a_crash_during_upserts_resumes_to_exactly_one_copy(make_rag_config, embedder, tiny_corpus: Path, monkeypatch):
    config = make_rag_config()
    v1 = build(config, embedder)
    (tiny_corpus / "python/zen_of_python.txt").write_text("Changed Zen.\n\n" + "Errors should never pass silently. " * 40)
    (tiny_corpus / "extra.txt").write_text("Extra document. " * 300)
    client = qdrant.open_client(config)
    real_upload = client.upload_points

    def crashing_upload(collection_name, points, **kwargs):
        points = list(points)
        real_upload(collection_name, points[: len(points) // 2], **kwargs)  # half the new chunks commit...
        raise KeyboardInterrupt("simulated crash mid-upsert")  # ...then the process dies

    monkeypatch.setattr(client, "upload_points", crashing_upload)
    with pytest.raises(KeyboardInterrupt):
        build(config, embedder)
    monkeypatch.undo()
    registry = versions.VersionRegistry.load(config)
    assert registry.versions[-1].status == "building"
    # the document half-written by the crash changes again before the resume: its stale chunks must go
    (tiny_corpus / "extra.txt").write_text("Extra document, second edit. " * 200)
    assert_resumes_to_a_fresh_build(config, embedder, make_rag_config, registry.versions[-1].collection)


_KILLED_CHILD = """
import json, os, signal, sys
from pathlib import Path
from qdrant_client import QdrantClient
from opsfabric.runtime_env import configure_runtime_env
configure_runtime_env()
from opsfabric.rag import ingest
from opsfabric.rag.settings import RagConfig
from opsfabric.settings import load_settings

real_upload = QdrantClient.upload_points
def upload_then_die(self, collection_name, points, **kwargs):
    points = list(points)
    real_upload(self, collection_name, points[: len(points) // 2], **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # no exception handlers, no atexit, no flush: a real crash
QdrantClient.upload_points = upload_then_die
config = RagConfig(load_settings(state_dir=Path(sys.argv[1]), rag=json.loads(sys.argv[2])))
ingest.ingest_corpus(config, show_progress=False)
"""


def test_a_process_killed_mid_upsert_is_resumed_by_the_next_run(make_rag_config, embedder, tiny_corpus: Path):
    import json
    import signal

    config = make_rag_config()
    build(config, embedder)
    qdrant.close_client(config)  # release the local folder for the child
    (tiny_corpus / "python/zen_of_python.txt").write_text("Changed Zen.\n\n" + "Errors should never pass silently. " * 40)
    (tiny_corpus / "extra.txt").write_text("Extra document. " * 300)
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(config.settings.state_dir), json.dumps(config.settings.rag.model_dump(mode="json"))],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    registry = versions.VersionRegistry.load(config)
    assert registry.versions[-1].status == "building"
    # killed while writing in WAL mode (qdrant.bulk_writes): SQLite recovers the WAL when the folder is opened again
    assert (config.qdrant_path / "collection" / registry.versions[-1].collection / "storage.sqlite-wal").exists()
    assert_resumes_to_a_fresh_build(config, embedder, make_rag_config, registry.versions[-1].collection)
    assert not (config.qdrant_path / "collection" / registry.versions[-1].collection / "storage.sqlite-wal").exists()


def test_a_crash_after_upserts_before_the_docstore_is_saved_resumes_cleanly(make_rag_config, embedder, tiny_corpus: Path, monkeypatch):
    config = make_rag_config()
    build(config, embedder)
    (tiny_corpus / "libffi/Thread-Safety.html").write_text("<html><body><p>libffi thread notes, rewritten for the test.</p></body></html>")
    (tiny_corpus / "late.md").write_text("# Late\n\nA document added just before the crash.")

    def crash(docstore, path):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ingest, "_persist_docstore", crash)
    with pytest.raises(OSError, match="simulated"):
        build(config, embedder)
    monkeypatch.undo()
    resumed = build(config, embedder)
    assert resumed.status == "resumed"
    assert set(resumed.documents_added) == {"late.md"} and resumed.documents_changed == ["libffi/Thread-Safety.html"]
    assert_one_copy_per_chunk(config, resumed.collection)
    assert build(config, embedder).status == "unchanged"


def test_bad_documents_are_reported_by_name_and_the_rest_is_ingested(make_rag_config, embedder, tiny_corpus: Path, tmp_path: Path):
    config = make_rag_config()
    v1 = build(config, embedder)
    (tiny_corpus / "empty.md").write_bytes(b"")
    (tiny_corpus / "blob.txt").write_bytes(b"\x00\x01binary")
    (tiny_corpus / "http/requests_README.md").write_bytes(b"Requests \xff\xfe now undecodable")
    outside = tmp_path / "outside.md"
    outside.write_text("# Outside\n\nnot part of the corpus")
    os.symlink(outside, tiny_corpus / "escape.md")
    v2 = build(config, embedder)
    reasons = {b["path"]: b["reason"] for b in v2.bad_documents}
    assert set(reasons) == {"empty.md", "blob.txt", "http/requests_README.md", "escape.md"}
    assert "symlink points outside the corpus folder" in reasons["escape.md"]
    assert "not valid UTF-8" in reasons["http/requests_README.md"]
    # the undecodable document keeps its last good chunks; nothing already indexed is lost
    docs = {doc for doc, _, _ in points(config, v2.collection).values()}
    assert "http/requests_README.md" in docs and v2.documents_removed == []
    assert set(points(config, v1.collection)) == set(points(config, v2.collection))  # bad files changed nothing


def test_fail_policy_stops_before_writing_anything(make_rag_config, embedder, tiny_corpus: Path):
    config = make_rag_config(ingest={"on_bad_document": "fail"})
    (tiny_corpus / "blob.txt").write_bytes(b"\x00\x01binary")
    with pytest.raises(CorpusError, match=r"blob\.txt: binary content"):
        ingest.load_configured_corpus(config)
    assert not (config.rag_state_dir / "versions.json").exists() and not config.qdrant_path.exists()


def test_a_second_process_on_the_same_local_folder_gets_a_named_error(make_rag_config):
    config = make_rag_config()
    qdrant.open_client(config)  # this process holds the lock
    code = (
        "import sys; from pathlib import Path\n"
        "from opsfabric.settings import load_settings\n"
        "from opsfabric.rag.settings import RagConfig\n"
        "from opsfabric.rag.qdrant import open_client\n"
        f"open_client(RagConfig(load_settings(state_dir=Path({str(config.settings.state_dir)!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode != 0
    assert "IndexLockedError" in done.stderr and str(config.qdrant_path.resolve()) in done.stderr
    assert f"pid {os.getpid()}" in done.stderr
    qdrant.close_client(config)  # the owner can reopen after closing: nothing corrupted
    assert qdrant.open_client(config).get_collections() is not None
