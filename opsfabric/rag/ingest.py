"""Ingestion: corpus → clean → chunk → embed → upsert into a new versioned Qdrant collection.

Versioning and incrementality (see docs/rag.md):

* Every build with a changed corpus writes a new collection ``<prefix>-vNNNN``. If an earlier
  build used the same chunking and embedding settings (same *index config hash*), the new
  collection starts as a copy of its points (vectors reused, nothing re-embedded) and of its
  docstore; the llama-index ``IngestionPipeline`` then embeds only new and changed documents
  (changed ones replace their old chunks; a chunk whose text did not change keeps its vector) and
  removed documents are deleted. A changed index config starts from an empty collection.
* An unchanged corpus (same corpus hash and index config as the newest build) builds nothing.
* Crash consistency: point ids are deterministic (uuid5 of doc id, chunk index and content hash),
  so upserts are idempotent; the docstore of a version is persisted only after its upserts are on
  disk; a resumed build first deletes points of documents its docstore does not know. A build
  interrupted anywhere therefore finishes on the next run with exactly one copy of every chunk.
* Concurrency: the version number is allocated, and an abandoned build taken over, under the index
  lock; a build holds a lease on its version, renewed as it goes (:mod:`opsfabric.rag.versions`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from opsfabric.rag import keyword, qdrant, versions
from opsfabric.rag.corpus import LoadedCorpus, LoadedDocument, load_corpus
from opsfabric.rag.errors import CorpusError
from opsfabric.rag.guard import detect_injection
from opsfabric.rag.settings import RagConfig

log = logging.getLogger(__name__)

# Bump when cleaning or chunk metadata changes meaning: a new pipeline version re-embeds everything.
PIPELINE_VERSION = "2"  # 2: named dense vector + BM25 sparse vector per chunk
POINT_NAMESPACE = uuid.UUID("5d1c7a4e-2f7b-4c1e-9a51-0f0c0ffee001")


@dataclass
class IngestReport:
    """What one ingestion run did (Prefect artifact, MLflow params/metrics, DVC metrics)."""

    status: str  # built | resumed | unchanged
    collection: str
    version: int
    base_collection: str | None
    corpus_hash: str
    config_hash: str
    documents_seen: int = 0
    documents_added: list[str] = field(default_factory=list)
    documents_changed: list[str] = field(default_factory=list)
    documents_removed: list[str] = field(default_factory=list)
    documents_unchanged: int = 0
    bad_documents: list[dict] = field(default_factory=list)
    injection_flagged: list[str] = field(default_factory=list)  # among the documents ingested by this run
    chunks_embedded: int = 0
    chunks_reused: int = 0  # chunks of changed documents whose text (hence vector) did not change
    chunks_copied: int = 0
    orphans_deleted: int = 0
    copy_seconds: float = 0.0  # copying the base version's points into the new collection
    chunks_total: int = 0
    seconds: float = 0.0
    needs_evaluation: bool = True  # False when the version was already judged (an unchanged corpus)
    resumed_because: str = ""  # why an abandoned build was taken over (owner dead, lease expired)

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_embedded / self.seconds if self.seconds and self.chunks_embedded else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "chunks_per_second": round(self.chunks_per_second, 2)}

    def summary(self) -> dict:
        """Counts only (for metrics files and tables)."""
        return {
            "status": self.status,
            "collection": self.collection,
            "documents_seen": self.documents_seen,
            "documents_added": len(self.documents_added),
            "documents_changed": len(self.documents_changed),
            "documents_removed": len(self.documents_removed),
            "documents_unchanged": self.documents_unchanged,
            "bad_documents": len(self.bad_documents),
            "chunks_embedded": self.chunks_embedded,
            "chunks_reused": self.chunks_reused,
            "chunks_copied": self.chunks_copied,
            "chunks_total": self.chunks_total,
            "seconds": round(self.seconds, 3),
        }


def load_configured_corpus(config: RagConfig) -> LoadedCorpus:
    """Load the configured corpus and apply ``rag.ingest.on_bad_document``.

    Raises:
        CorpusError: the folder is missing or empty, or bad documents under the ``fail`` policy
            (raised before anything is written; the message names every bad file and reason).
    """
    c = config.rag.corpus
    corpus = load_corpus(config.corpus_dir, c.include, c.exclude, max_bytes=c.max_bytes, cache_dir=config.rag_state_dir / "clean_cache")
    for bad in corpus.bad_documents:
        log.warning("bad document skipped: %s", bad)
    if corpus.bad_documents and config.rag.ingest.on_bad_document == "fail":
        raise CorpusError(
            f"{len(corpus.bad_documents)} bad document(s) in {config.corpus_dir} (rag.ingest.on_bad_document=fail): "
            + "; ".join(str(b) for b in corpus.bad_documents),
            corpus.bad_documents,
        )
    if not corpus.documents:
        raise CorpusError(f"no ingestible documents in {config.corpus_dir} (include={c.include}, exclude={c.exclude})")
    return corpus


def point_id(doc_id: str, chunk_index: int, content_hash: str) -> str:
    """Deterministic Qdrant point id: the same chunk of the same content always has the same id."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}\0{chunk_index}\0{content_hash}"))


def make_splitter(config: RagConfig) -> Any:
    from llama_index.core.node_parser import SentenceSplitter, TokenTextSplitter

    p = config.rag.chunking

    def id_func(index: int, document: Any) -> str:
        return point_id(document.doc_id, index, document.metadata["content_hash"])

    cls = SentenceSplitter if p.splitter == "sentence" else TokenTextSplitter
    return cls(chunk_size=p.chunk_size, chunk_overlap=p.chunk_overlap, id_func=id_func, include_prev_next_rel=False)


def to_llama_document(doc: LoadedDocument) -> Any:
    from llama_index.core import Document

    metadata = doc.metadata(PIPELINE_VERSION)
    # Metadata stays out of the embedded and LLM text: vectors depend on the chunk text alone.
    return Document(id_=doc.doc_id, text=doc.text, metadata=metadata, excluded_embed_metadata_keys=list(metadata), excluded_llm_metadata_keys=list(metadata))


def make_chunk_stamper(ingested_at: str) -> Any:
    from llama_index.core.schema import TransformComponent

    class StampChunks(TransformComponent):
        """Adds chunk index and ingestion time to each chunk's payload (not to its embedded text)."""

        def __call__(self, nodes: list, **kwargs: Any) -> list:
            counters: dict[str, int] = {}
            for node in nodes:
                index = counters.get(node.ref_doc_id, 0)
                counters[node.ref_doc_id] = index + 1
                node.metadata["chunk_index"] = index
                node.metadata["ingested_at"] = ingested_at
                keys = list(node.metadata)
                node.excluded_embed_metadata_keys = keys
                node.excluded_llm_metadata_keys = keys
            return nodes

    return StampChunks()


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def reusable_vectors(client: Any, collection: str, doc_ids: list[str]) -> dict[str, list[float]]:
    """Vectors of the chunks ``doc_ids`` have in ``collection`` now, keyed by the sha256 of the chunk text.

    A changed document is re-chunked in full, but a chunk whose text did not change (an edit at
    the end of a long document leaves most chunks as they were) reuses its vector instead of
    being embedded again. Vectors in one version lineage share the index config, so they match.
    """
    from qdrant_client import models

    if not doc_ids:
        return {}
    found: dict[str, list[float]] = {}
    match = models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=doc_ids))])
    for point in qdrant.iter_points(client, collection, with_vectors=True, scroll_filter=match):
        text = qdrant.chunk_text(point.payload or {})
        vector = point.vector.get(qdrant.DENSE_VECTOR) if isinstance(point.vector, dict) else None
        if text is not None and vector is not None:
            found[text_key(text)] = vector
    return found


# Chunks embedded between two lease renewals: ~13 s of MiniLM on 2 cores, well inside the lease.
EMBED_SLICE = 256


def make_chunk_embedder(embed_model: Any, reusable: dict[str, list[float]], counts: dict[str, int], heartbeat: Any = None) -> Any:
    """The pipeline's embedding step: reuse a vector when the exact chunk text has one, embed the rest.

    Args:
        heartbeat: called between slices of :data:`EMBED_SLICE` chunks (the build renews its lease).
    """
    from llama_index.core.schema import MetadataMode, TransformComponent

    class EmbedNewChunks(TransformComponent):
        """Embeds chunks in batches; a chunk text already embedded in this index lineage reuses its vector."""

        def __call__(self, nodes: list, **kwargs: Any) -> list:
            todo = []
            for node in nodes:
                vector = reusable.get(text_key(node.get_content(metadata_mode=MetadataMode.EMBED)))
                if vector is None:
                    todo.append(node)
                else:
                    node.embedding = vector
            for start in range(0, len(todo), EMBED_SLICE):
                embed_model(todo[start : start + EMBED_SLICE], **kwargs)
                if heartbeat is not None:
                    heartbeat()
            counts["embedded"] += len(todo)
            counts["reused"] += len(nodes) - len(todo)
            return nodes

    return EmbedNewChunks()


def make_vector_store(config: RagConfig, client: Any, collection: str, before_write: Any = None) -> Any:
    """llama-index's ``QdrantVectorStore`` writing a dense and a BM25 sparse vector per chunk.

    ``before_write(force)`` is called before every write: ``force=True`` before an ``add`` (the
    pipeline writes all its chunks in one ``add`` after every transformation, so the build checks it
    still owns the version right there), ``False`` before a ``delete``.

    The sparse vectors come from our encoders (:mod:`opsfabric.rag.keyword`), so no sparse model
    is downloaded, and they see each chunk's document title with its text (the dense vector sees
    the text alone). The store hands the encoder only texts, batch by batch in node order, so the
    titles of the nodes being written are queued alongside and checked against each text.
    """
    from collections import deque

    from llama_index.core.schema import MetadataMode
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    pending: deque[tuple[str, str]] = deque()  # (embedded text, title) of the nodes being written
    encode_chunks, encode_queries = keyword.sparse_encoders(**config.keyword_weights())

    def encode_documents(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        titled = []
        for text in texts:
            content, title = pending.popleft()
            if content != text:
                raise RuntimeError("the vector store encoded chunks out of node order: cannot attach document titles")
            titled.append(f"{title} {text}")
        return encode_chunks(titled)

    class TitledQdrantVectorStore(QdrantVectorStore):
        def add(self, nodes: list, **kwargs: Any) -> list[str]:
            if before_write is not None:
                before_write(True)
            return super().add(nodes, **kwargs)

        def delete(self, ref_doc_id: str, **kwargs: Any) -> None:
            if before_write is not None:
                before_write(False)
            return super().delete(ref_doc_id, **kwargs)

        def _build_points(self, nodes: list, sparse_vector_name: str) -> Any:
            pending.clear()
            pending.extend((n.get_content(metadata_mode=MetadataMode.EMBED), n.metadata.get("title", "")) for n in nodes)
            return super()._build_points(nodes, sparse_vector_name)

    return TitledQdrantVectorStore(
        collection_name=collection, client=client, batch_size=config.rag.embedding.batch_size,
        enable_hybrid=True, dense_vector_name=qdrant.DENSE_VECTOR, sparse_vector_name=qdrant.SPARSE_VECTOR,
        sparse_doc_fn=encode_documents, sparse_query_fn=encode_queries,
    )


def embedding_dimensions(config: RagConfig, embed_model: Any, client: Any = None, same_model: tuple[str | None, ...] = ()) -> int:
    """The dense vector size: configured, else that of a collection built by the same model, else probed.

    Args:
        same_model: collections of this index lineage (same embedding model); reading their size
            spares an incremental build a model call (a second or so on a loaded 2-core machine).
    """
    if config.rag.embedding.dimensions:
        return config.rag.embedding.dimensions
    for name in same_model:
        if name and client is not None and client.collection_exists(name):
            return client.get_collection(name).config.params.vectors[qdrant.DENSE_VECTOR].size
    return len(embed_model.get_text_embedding("dimension probe"))


def _load_docstore(path) -> Any:
    from llama_index.core.storage.docstore import SimpleDocumentStore

    return SimpleDocumentStore.from_persist_path(str(path)) if path.exists() else SimpleDocumentStore()


def _persist_docstore(docstore: Any, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.json")
    docstore.persist(str(tmp))
    os.replace(tmp, path)  # atomic: the docstore on disk is the old one or the new one, never half


def ingest_corpus(config: RagConfig, embed_model: Any | None = None, *, show_progress: bool = True) -> IngestReport:
    """Load the configured corpus (bad-document policy applied before any write) and build the next index version."""
    from opsfabric.rag.embeddings import configured_embedding

    corpus = load_configured_corpus(config)
    return build_index_version(config, corpus, embed_model or configured_embedding(config), show_progress=show_progress)


def build_index_version(
    config: RagConfig, corpus: LoadedCorpus, embed_model: Any, *, show_progress: bool = True, lease_seconds: float | None = None
) -> IngestReport:
    """Build (or resume, or skip) the index version for ``corpus``. Does not move the live alias.

    Args:
        config: the run's RAG configuration.
        corpus: documents loaded by :func:`load_configured_corpus` (bad ones already reported).
        embed_model: from :func:`opsfabric.rag.embeddings.make_embedding`.
        show_progress: tqdm progress bars for chunking and embedding.
        lease_seconds: how long the claim on the version lasts without renewal (default ``rag.ingest.lease_seconds``).

    Raises:
        BuildInProgressError: another run is building a version and its lease is live.
        LeaseLostError: this build was too slow to renew its lease and another run took it over.
    """
    started = time.perf_counter()
    with versions.index_session(config, "build an index version") as client:
        claim = versions.claim_build(config, client, corpus.corpus_hash, lease_seconds=lease_seconds)
        if claim.kind == "unchanged":
            base = claim.version
            log.info("corpus %s unchanged since %s: nothing to embed", corpus.corpus_hash, base.collection)
            return IngestReport(
                "unchanged", base.collection, base.version, base.base_collection, corpus.corpus_hash, base.config_hash,
                documents_seen=len(corpus.documents), documents_unchanged=len(corpus.documents), bad_documents=_bad(corpus),
                chunks_total=client.count(base.collection, exact=True).count, seconds=time.perf_counter() - started,
                needs_evaluation=not base.decision,
            )
        try:
            return _build(config, client, claim, corpus, embed_model, show_progress, started)
        except BaseException:
            try:
                claim.lease.abandon()  # the next run resumes it at once instead of waiting for the lease to expire
            except Exception:  # noqa: BLE001 - the build's own error is the one to report
                log.exception("could not release the failed build of %s (the next run takes it over once its lease expires)", claim.version.collection)
            raise


def _bad(corpus: LoadedCorpus) -> list[dict]:
    return [{"path": b.path, "reason": b.reason} for b in corpus.bad_documents]


def _build(config: RagConfig, client: Any, claim: versions.BuildClaim, corpus: LoadedCorpus, embed_model: Any, show_progress: bool, started: float) -> IngestReport:
    """Write the claimed version: copy its base, drop orphans, ingest the diff, persist its docstore, mark it built."""
    from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
    from qdrant_client import models

    version, lease = claim.version, claim.lease
    resuming = claim.kind == "resume"
    if resuming:  # docstores the runs this one took over never moved into place: never used
        for stale in versions.docstore_path(config, version.collection).parent.glob(f"{version.collection}.pending-*.json"):
            if stale != lease.pending_docstore():
                stale.unlink(missing_ok=True)
    may_hold_orphans = resuming or client.collection_exists(version.collection)
    if not client.collection_exists(version.collection):
        dimensions = embedding_dimensions(config, embed_model, client, (version.base_collection,))
        qdrant.ensure_collection(client, version.collection, dimensions)
    copied, copy_started = 0, time.perf_counter()
    if version.base_collection and not version.copied_from_base:
        with qdrant.bulk_writes(client, version.collection):
            copied = qdrant.copy_points(client, version.base_collection, version.collection, on_batch=lease.renew)
        lease.mark_copied()  # only once the copy is on disk: a resume then skips it
    copy_seconds = time.perf_counter() - copy_started

    own_docstore = versions.docstore_path(config, version.collection)
    base_docstore = versions.docstore_path(config, version.base_collection) if version.base_collection else None
    docstore = _load_docstore(own_docstore if own_docstore.exists() or base_docstore is None else base_docstore)
    known = {doc_id for doc_id in docstore.get_all_document_hashes().values()}
    documents = [to_llama_document(d) for d in corpus.documents]
    added = [d.id_ for d in documents if docstore.get_document_hash(d.id_) is None]
    changed = [d.id_ for d in documents if docstore.get_document_hash(d.id_) not in (None, d.hash)]
    # A bad document keeps its last good chunks: it is neither re-ingested nor removed.
    removed = sorted(known - {d.id_ for d in documents} - {b.path for b in corpus.bad_documents})
    counts = {"embedded": 0, "reused": 0}

    with qdrant.bulk_writes(client, version.collection):
        # Points of documents the docstore does not know were written by an interrupted run: drop them.
        # Only a resumed build (or a collection left without a registry entry) can hold such points.
        present = {payload.get("doc_id") for _, payload in qdrant.scroll_payloads(client, version.collection)} if may_hold_orphans else set()
        orphans = sorted(d for d in present - known if d)
        if orphans:
            lease.renew(force=True)  # still ours? (LeaseLostError otherwise, before deleting anything)
            client.delete(version.collection, models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=orphans))]), wait=True)
            log.warning("deleted chunks of %d document(s) left by an interrupted build: %s", len(orphans), orphans[:5])
        vector_store = make_vector_store(config, client, version.collection, before_write=lambda force: lease.renew(force=force))
        for doc_id in removed:
            vector_store.delete(doc_id)
            docstore.delete_document(doc_id, raise_error=False)
        reusable = reusable_vectors(client, version.collection, changed)
        pipeline = IngestionPipeline(
            transformations=[make_splitter(config), make_chunk_stamper(_now()), make_chunk_embedder(embed_model, reusable, counts, heartbeat=lease.renew)],
            vector_store=vector_store,
            docstore=docstore,
            docstore_strategy=DocstoreStrategy.UPSERTS,
            disable_cache=True,
        )
        pipeline.run(documents=documents, show_progress=show_progress, store_doc_text=False)
    # Only after the upserts are on disk, and beside the version's docstore: finish() moves it into
    # place once it has checked (under the lock) that this run still owns the build.
    _persist_docstore(docstore, lease.pending_docstore())

    ingested = set(added) | set(changed)
    report = IngestReport(
        "resumed" if resuming else "built", version.collection, version.version, version.base_collection, corpus.corpus_hash, version.config_hash,
        documents_seen=len(corpus.documents), documents_added=added, documents_changed=changed, documents_removed=removed,
        documents_unchanged=len(documents) - len(added) - len(changed), bad_documents=_bad(corpus),
        injection_flagged=[d.doc_id for d in corpus.documents if d.doc_id in ingested and detect_injection(d.text)],
        chunks_embedded=counts["embedded"], chunks_reused=counts["reused"], chunks_copied=copied, orphans_deleted=len(orphans), copy_seconds=copy_seconds,
        chunks_total=client.count(version.collection, exact=True).count, resumed_because=claim.reason,
    )
    report.seconds = time.perf_counter() - started
    lease.finish(corpus.corpus_hash, report.summary())
    return report


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
