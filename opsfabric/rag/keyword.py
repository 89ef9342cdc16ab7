"""Keyword (BM25) retrieval as Qdrant sparse vectors: no sparse model, nothing downloaded.

Each chunk is stored with a sparse vector whose entries are BM25 term weights,
``tf·(k1+1) / (tf + k1·(1 − b + b·len/avg_len))``, and the collection's sparse vector has Qdrant's
``IDF`` modifier, so Qdrant multiplies by the inverse document frequency at query time. A query is
the set of its terms with weight 1, so Qdrant's dot product is the BM25 score. This is how
Qdrant's own ``bm25`` model works; ``avg_len`` is a fixed parameter (an index setting, part of the
index config hash) so that incremental builds stay consistent without re-weighting old chunks.

Terms are lower-case words without stopwords and with a light plural/verb suffix strip; a term's
sparse index is a stable 32-bit hash of the term.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

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


def term_index(term: str) -> int:
    """Stable sparse index of a term (the same in every process and version)."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "little")


def _term_counts(text: str) -> Counter[int]:
    return Counter(term_index(t) for t in tokenize(text))


def document_vector(text: str, k1: float, b: float, avg_len: float) -> tuple[list[int], list[float]]:
    """BM25 term weights of one chunk (IDF is applied by Qdrant at query time)."""
    counts = _term_counts(text)
    length = sum(counts.values())
    norm = k1 * (1 - b + b * length / avg_len)
    indices = sorted(counts)
    return indices, [counts[i] * (k1 + 1) / (counts[i] + norm) for i in indices]


def query_vector(text: str) -> tuple[list[int], list[float]]:
    """Every query term once, weight 1: Qdrant's dot product with IDF is then the BM25 score."""
    indices = sorted(set(_term_counts(text)))
    return indices, [1.0] * len(indices)


def sparse_encoders(k1: float, b: float, avg_len: float):
    """(documents, queries) encoders in llama-index's ``SparseEncoderCallable`` shape."""

    def encode_documents(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        pairs = [document_vector(t, k1, b, avg_len) for t in texts]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def encode_queries(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        pairs = [query_vector(t) for t in texts]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    return encode_documents, encode_queries
