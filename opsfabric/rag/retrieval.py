"""Retrieval over one index version: dense (Qdrant), keyword (BM25) and hybrid (weighted RRF).

The BM25 side is computed here over the collection's own chunk texts (no sparse model download);
hybrid mode fuses the two ranked lists with weighted reciprocal rank fusion:
``score(chunk) = Σ_lists weight / (rrf_k + rank)``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from opsfabric.rag import store
from opsfabric.rag.settings import RetrievalParams

_TOKEN = re.compile(r"[a-z0-9]+(?:[_'][a-z0-9]+)*")
STOPWORDS = frozenset(
    "a an and are as at be but by can do does for from has have how i if in into is it its of on or "
    "that the their then there these this to was were what when where which who why will with you your".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stopwords, with a light plural/verb suffix strip."""
    out = []
    for token in _TOKEN.findall(text.lower()):
        if token in STOPWORDS:
            continue
        for suffix in ("ing", "es", "s"):
            if len(token) > len(suffix) + 3 and token.endswith(suffix):
                token = token[: -len(suffix)]
                break
        out.append(token)
    return out


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
    text = json.loads(payload.get("_node_content") or "{}").get("text", "")
    return Chunk(str(point_id), payload.get("doc_id", ""), payload.get("title", ""), int(payload.get("chunk_index", 0)), text, score)


class Retriever:
    """Dense, BM25 and hybrid search over one collection (or alias). Build once, query many times."""

    def __init__(self, client: Any, collection: str, embed_model: Any, params: RetrievalParams):
        from rank_bm25 import BM25Okapi

        collection = store.resolve_collection(client, collection)
        self.client, self.collection, self.embed_model, self.params = client, collection, embed_model, params
        self.chunks = [chunk_from_payload(pid, payload) for pid, payload in store.scroll_payloads(client, collection)]
        self.chunks.sort(key=lambda c: (c.doc_id, c.chunk_index))
        self._by_id = {c.chunk_id: c for c in self.chunks}
        self._bm25 = BM25Okapi([tokenize(f"{c.title} {c.text}") for c in self.chunks]) if self.chunks else None

    def dense(self, query: str, k: int) -> list[Chunk]:
        vector = self.embed_model.get_query_embedding(query)
        hits = self.client.query_points(self.collection, query=vector, limit=k, with_payload=True).points
        return [self._copy(str(h.id), float(h.score), "dense", rank) for rank, h in enumerate(hits, start=1)]

    def bm25(self, query: str, k: int) -> list[Chunk]:
        if self._bm25 is None:
            return []
        scores = self._bm25.get_scores(tokenize(query))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
        return [self._copy(self.chunks[i].chunk_id, float(scores[i]), "bm25", rank) for rank, i in enumerate(order, start=1) if scores[i] > 0]

    def hybrid(self, query: str, k: int) -> list[Chunk]:
        p = self.params
        fused: dict[str, Chunk] = {}
        for name, weight, hits in (
            ("dense", p.dense_weight, self.dense(query, p.candidates)),
            ("bm25", p.bm25_weight, self.bm25(query, p.candidates)),
        ):
            for rank, hit in enumerate(hits, start=1):
                chunk = fused.setdefault(hit.chunk_id, self._copy(hit.chunk_id, 0.0, None, 0))
                chunk.score += weight / (p.rrf_k + rank)
                chunk.ranks[name] = rank
        return sorted(fused.values(), key=lambda c: (-c.score, c.doc_id, c.chunk_index))[:k]

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> list[Chunk]:
        """Top-k chunks with the configured (or given) mode: ``dense``, ``bm25`` or ``hybrid``."""
        k = k or self.params.top_k
        return getattr(self, mode or self.params.mode)(query, k)

    def _copy(self, chunk_id: str, score: float, mode: str | None, rank: int) -> Chunk:
        base = self._by_id.get(chunk_id)
        if base is None:  # written after this retriever was built
            point = self.client.retrieve(self.collection, [chunk_id], with_payload=True)[0]
            base = chunk_from_payload(chunk_id, point.payload or {})
        return Chunk(base.chunk_id, base.doc_id, base.title, base.chunk_index, base.text, score, {mode: rank} if mode else {})
