"""Fixtures the agent tests borrow: the RAG tests' tiny corpus and MiniLM, the ML tests' small churn data.

Imported, not copied, so the live-platform tests build their index and data exactly as the RAG and
ML tests do.
"""

from tests.ml.conftest import churn_dir, copy_churn, ml_overlay  # noqa: F401
from tests.rag.conftest import embedder, make_rag_config, rag_overrides, tiny_corpus  # noqa: F401
