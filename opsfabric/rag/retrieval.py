"""Retrieval over one index version: dense, keyword (BM25) and hybrid (weighted RRF), all in Qdrant.

Dense search queries the chunk's MiniLM vector; keyword search queries its BM25 sparse vector
(:mod:`opsfabric.rag.keyword`, IDF applied by Qdrant). Both are top-k queries served by Qdrant,
so retrieval cost does not grow with a scan of the collection in this process. Hybrid mode fuses
the two ranked lists with weighted reciprocal rank fusion: ``score = Σ_lists weight / (rrf_k + rank)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opsfabric.rag import keyword, qdrant
from opsfabric.rag.settings import RetrievalParams


@dataclass
class Chunk:
    """One retrieved chunk with its provenance (what citations point at)."""

    chunk_id: str
    doc_id: str
    title: str
    chunk_index: int
    text: str
    score: float = 0.0
    ranks: dict[str, int] = field(default_factory=dict)

    def citation(self) -> dict:
        return {"chunk_id": self.chunk_id, "source_path": self.doc_id, "title": self.title, "chunk_index": self.chunk_index}


def chunk_from_payload(point_id: str, payload: dict, score: float = 0.0) -> Chunk:
    text = qdrant.chunk_text(payload) or ""
    return Chunk(str(point_id), payload.get("doc_id", ""), payload.get("title", ""), int(payload.get("chunk_index", 0)), text, score)


class Retriever:
    """Dense, BM25 and hybrid search over one collection (or alias). Build once, query many times."""

    def __init__(self, client: Any, collection: str, embed_model: Any, params: RetrievalParams):
        self.client, self.embed_model, self.params = client, embed_model, params
        self.collection = qdrant.resolve_collection(client, collection)

    def dense(self, query: str, k: int) -> list[Chunk]:
        vector = self.embed_model.get_query_embedding(query)
        hits = self.client.query_points(self.collection, query=vector, using=qdrant.DENSE_VECTOR, limit=k, with_payload=True).points
        return [_chunk(hit, "dense", rank) for rank, hit in enumerate(hits, start=1)]

    def bm25(self, query: str, k: int) -> list[Chunk]:
        from qdrant_client import models

        indices, values = keyword.query_vector(query)
        if not indices:  # only stopwords or punctuation: no keyword evidence
            return []
        sparse = models.SparseVector(indices=indices, values=values)
        hits = self.client.query_points(self.collection, query=sparse, using=qdrant.SPARSE_VECTOR, limit=k, with_payload=True).points
        return [_chunk(hit, "bm25", rank) for rank, hit in enumerate(hits, start=1) if hit.score > 0]

    def hybrid(self, query: str, k: int) -> list[Chunk]:
        p = self.params
        fused: dict[str, Chunk] = {}
        for name, weight, hits in (
            ("dense", p.dense_weight, self.dense(query, p.candidates)),
            ("bm25", p.bm25_weight, self.bm25(query, p.candidates)),
        ):
            for rank, hit in enumerate(hits, start=1):
                chunk = fused.setdefault(hit.chunk_id, Chunk(hit.chunk_id, hit.doc_id, hit.title, hit.chunk_index, hit.text))
                chunk.score += weight / (p.rrf_k + rank)
                chunk.ranks[name] = rank
        return sorted(fused.values(), key=lambda c: (-c.score, c.doc_id, c.chunk_index))[:k]

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> list[Chunk]:
        """Top-k chunks with the configured (or given) mode: ``dense``, ``bm25`` or ``hybrid``."""
        k = k or self.params.top_k
        return getattr(self, mode or self.params.mode)(query, k)


def _chunk(hit: Any, mode: str, rank: int) -> Chunk:
    chunk = chunk_from_payload(str(hit.id), hit.payload or {}, float(hit.score))
    chunk.ranks[mode] = rank
    return chunk


def all_chunks(client: Any, collection: str) -> list[Chunk]:
    """Every chunk of a collection (or alias), in document order. Evaluation only: it reads the whole collection."""
    collection = qdrant.resolve_collection(client, collection)
    chunks = [chunk_from_payload(pid, payload) for pid, payload in qdrant.scroll_payloads(client, collection)]
    return sorted(chunks, key=lambda c: (c.doc_id, c.chunk_index))
