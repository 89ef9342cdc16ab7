"""Errors of the RAG pipeline. Each message names the file, collection, key or rule at fault."""

from __future__ import annotations

from pathlib import Path

from opsfabric.errors import OpsFabricError, StaleDecisionError


class RagError(OpsFabricError):
    """Base class for errors the RAG pipeline raises on purpose."""


class BadDocumentError(RagError):
    """A corpus file cannot be ingested (empty, binary, undecodable, oversize, outside the corpus...)."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class CorpusError(RagError):
    """The corpus as a whole cannot be ingested (missing folder, bad documents under ``fail`` policy)."""

    def __init__(self, message: str, bad_documents: list[BadDocumentError] | None = None):
        super().__init__(message)
        self.bad_documents = bad_documents or []


class IndexLockedError(RagError):
    """The local Qdrant folder is held by another process (Qdrant local mode allows one client)."""


class IndexVersionError(RagError):
    """An index version or alias operation is impossible (unknown version, nothing to roll back to...)."""


class BuildInProgressError(IndexVersionError):
    """Another process is building an index version and its lease has not expired: it is not taken over."""


class LeaseLostError(IndexVersionError):
    """This build's lease expired and another process took the version over: this build stops writing."""


class StaleGateDecisionError(RagError, StaleDecisionError):
    """The live alias moved after the candidate and the live version were scored: the decision is not applied."""


class GoldenSetError(RagError):
    """The golden QA set is malformed or its reference passages are not in the corpus."""


class EndpointError(RagError):
    """An OpenAI-compatible endpoint (embeddings or chat) failed or answered something unusable."""
