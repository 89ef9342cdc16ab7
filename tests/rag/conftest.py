"""RAG fixtures: one MiniLM per session, a tiny real corpus copied into tmp, configs pointing at both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from opsfabric.settings import PROJECT_ROOT, load_settings

CORPUS = PROJECT_ROOT / "data" / "corpus"
GOLDEN = PROJECT_ROOT / "data" / "golden" / "rag_qa.jsonl"
# Small documents of every format, including the prompt-injection sample.
TINY_DOCS = [
    "python/zen_of_python.txt",
    "python/python_history.pdf",
    "libffi/Introduction.html",
    "libffi/Thread-Safety.html",
    "libffi/Memory-Usage.html",
    "http/requests_README.md",
    "notes/ops_runbook_injection_sample.md",
]


@pytest.fixture(scope="session")
def embedder():
    """The real local MiniLM embedding (loaded once per session)."""
    from opsfabric.rag.embeddings import make_embedding
    from opsfabric.rag.settings import EmbeddingSettings

    return make_embedding(EmbeddingSettings())


def copy_docs(target: Path, docs: list[str] = TINY_DOCS) -> Path:
    for rel in docs:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CORPUS / rel, target / rel)
    return target


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return copy_docs(tmp_path / "corpus")


def tiny_golden(path: Path, docs: list[str] = TINY_DOCS) -> Path:
    """The shipped golden items whose reference document is in ``docs``."""
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["doc_id"] in docs))
    return path


@pytest.fixture
def rag_overrides(tmp_path: Path, tiny_corpus: Path):
    """Factory for the ``rag`` overrides of a test: tiny corpus, tmp golden files, small chunks."""

    def factory(golden_docs: list[str] = TINY_DOCS, **extra) -> dict:
        golden = tiny_golden(tmp_path / "golden.jsonl", golden_docs)
        rag = {
            "corpus": {"path": str(tiny_corpus)},
            "golden": {"source": str(golden), "prepared": str(tmp_path / "prepared" / "golden.parquet")},
            "chunking": {"chunk_size": 128, "chunk_overlap": 16},
            # floors for the tiny corpus; the shipped thresholds are exercised by tests/rag/test_evals.py
            "gate": {"thresholds": {"hit_at_5": 0.6, "mrr": 0.4, "context_recall": 0.5}},
        }
        for key, value in extra.items():
            rag.setdefault(key, {}).update(value)
        return rag

    return factory


@pytest.fixture
def make_rag_config(tmp_path: Path, rag_overrides):
    """RagConfig with state under tmp and the tiny corpus (keyword args merge into ``rag``)."""
    from opsfabric.rag.settings import RagConfig

    def factory(state: str = "state", **extra) -> RagConfig:
        return RagConfig(load_settings(state_dir=tmp_path / state, rag=rag_overrides(**extra)))

    yield factory
    _close_all_clients()


@pytest.fixture
def overlay_file(tmp_path: Path, rag_overrides):
    """A YAML overlay for flows (state, corpus and golden files under tmp)."""

    def factory(**extra) -> list[str]:
        path = tmp_path / "overlay.yaml"
        path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "rag": rag_overrides(**extra)}))
        return [str(path)]

    yield factory
    _close_all_clients()


def _close_all_clients() -> None:
    """Release every local Qdrant folder this test opened (the next test uses other folders)."""
    from opsfabric.rag import qdrant

    qdrant.close_all_clients()
