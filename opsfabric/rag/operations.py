"""Operating the live index: roll the alias back, show the versions, answer a question.

What ``python -m flows.rag_index rollback|status|ask`` (and ``make rollback``, ``make index-status``,
``make ask``) run. Each call is one index session: in local mode it waits for a build or a gate in
progress rather than failing on the Qdrant folder.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from opsfabric.rag import qdrant, versions
from opsfabric.rag.answer import Answer
from opsfabric.rag.errors import IndexVersionError
from opsfabric.rag.settings import RagConfig

log = logging.getLogger(__name__)


def rollback_index(config: RagConfig, to: str | None = None) -> dict:
    """Point the live alias back at the previous live version (or ``to``), under the index lock.

    Raises:
        IndexVersionError: nothing to roll back to, or the target is unfinished, unsearchable or deleted.
    """
    purpose = f"roll back alias {config.rag.store.alias}"
    with versions.index_session(config, purpose) as client, versions.reconciled(config, client, purpose) as (registry, _):
        previous, current = versions.rollback(client, config, registry, to)
    log.warning("rolled back alias %s: %s -> %s", config.rag.store.alias, previous, current)
    return {"alias": config.rag.store.alias, "from": previous, "to": current}


def index_status(config: RagConfig) -> dict:
    """Versions, their status, scores and builders, and where the alias points (read-only)."""
    with versions.index_session(config, "read the index status") as client:
        live = qdrant.alias_target(client, config.rag.store.alias)
    registry = versions.VersionRegistry.load(config)
    return {
        "alias": config.rag.store.alias,
        "live": live,
        "live_history": registry.live_history,
        "versions": [
            {
                "collection": v.collection, "status": v.status, "corpus_hash": v.corpus_hash, "config_hash": v.config_hash,
                "scores": v.eval_scores, **({"owner": v.owner, "lease_expires_at": v.lease_expires_at} if v.status == "building" else {}),
                **({"rolled_back_at": v.rolled_back_at, "rolled_back_by": v.rolled_back_by} if v.rolled_back_at else {}),
            }
            for v in registry.versions
        ],
    }


def answer_question(config: RagConfig, question: str, embed_model: Any | None = None, *, collection: str | None = None) -> Answer:
    """Answer from the live alias (or a given collection) with citations, latency and cost.

    Raises:
        IndexVersionError: the target was built with another embedding model or tokenizer.
    """
    from opsfabric.rag.answer import make_answerer
    from opsfabric.rag.embeddings import configured_embedding
    from opsfabric.rag.retrieval import Retriever

    embed_model = embed_model or configured_embedding(config)
    with versions.index_session(config, "answer a question") as client:
        target = qdrant.resolve_collection(client, collection or config.rag.store.alias)
        recorded = versions.VersionRegistry.load(config).find(target)
        if recorded is not None and not versions.query_compatible(recorded.index_config, config.index_config()):
            raise IndexVersionError(
                f"{target} was built with another embedding model or tokenizer than the current configuration "
                f"({recorded.index_config.get('embedding')} vs {config.index_config()['embedding']}): queries would not match its vectors"
            )
        retriever = Retriever(client, target, embed_model, config.rag.retrieval)
        started = time.perf_counter()
        hits = retriever.search(question)
        retrieval_ms = (time.perf_counter() - started) * 1000
    answer = make_answerer(config, embed_model).answer(question, hits)
    answer.retrieval_ms = retrieval_ms
    log.info(
        "answer (%s%s): %.0f ms retrieval + %.0f ms answer, %d+%d tokens, $%.6f",
        answer.method, f", prompt {answer.prompt_version} {answer.prompt_hash}" if answer.prompt_hash else "",
        retrieval_ms, answer.latency_ms, answer.prompt_tokens, answer.completion_tokens, answer.cost_usd,
    )
    return answer


def report_json(payload: Any) -> str:
    """A status or result as indented JSON for the command line."""
    return json.dumps(payload, indent=2, sort_keys=True, default=str)
