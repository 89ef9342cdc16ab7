"""RAG evaluation, gate, rollback and question-answering tasks."""

from __future__ import annotations

from functools import partial

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.rag import operations, promotion, records
from opsfabric.rag.answer import Answer
from opsfabric.rag.ingest import IngestReport
from opsfabric.rag.promotion import GateOutcome
from opsfabric.rag.settings import RagConfig
from tasks.ingest import rag_lineage


@task(name="evaluate-and-gate-index", cache_policy=NO_CACHE)
def evaluate_and_gate(
    config: RagConfig, collection: str, corpus_hash: str | None, index_run_id: str | None, allow_rolled_back: bool = False
) -> GateOutcome:
    """Evaluate a version and the live one on the golden set; move the alias only if it passes and the live one did not change meanwhile.

    Each verdict is an MLflow ``rag-eval`` run; a verdict made stale by another run's promotion is
    judged again once (see ``opsfabric.rag.promotion``). No Prefect retries: that is the retry.
    ``allow_rolled_back``: the operator named ``collection``, which may go live again after a rollback.
    """
    record = partial(records.evaluation_run, config, collection, rag_lineage(config, corpus_hash), index_run_id=index_run_id)
    outcome = promotion.gate_version(config, collection, record=record, allow_rolled_back=allow_rolled_back)
    get_run_logger().info("gate %s: %s", collection, outcome.summary())
    create_table_artifact(outcome.verdict.candidate.table(), key="rag-eval-per-question", description=f"Golden-set results of {collection}")
    create_markdown_artifact(gate_markdown(config, outcome), key="rag-gate", description="Index version gate decision")
    return outcome


def gate_markdown(config: RagConfig, outcome: GateOutcome) -> str:
    verdict = outcome.verdict
    live = verdict.live
    return "\n".join(
        [
            f"# RAG gate: {outcome.label} `{outcome.decision.candidate}`",
            "",
            f"- alias `{config.rag.store.alias}` → `{outcome.live_collection}` (was `{verdict.live_collection}`)",
            f"- answers: {verdict.candidate.answer_method}; LLM judge: {verdict.candidate.llm_judge}",
            *[f"- {reason}" for reason in outcome.decision.reasons],
            *[f"- earlier verdict not applied: {reason}" for reason in outcome.stale],
            "",
            "| metric | candidate | live |",
            "|---|---|---|",
            *[
                f"| {k} | {v:.4f} | {live.aggregates.get(k, float('nan')):.4f} |" if live else f"| {k} | {v:.4f} | - |"
                for k, v in sorted(verdict.candidate.aggregates.items())
            ],
            f"\nretired: {outcome.retired or 'none'}",
        ]
    )


@task(name="skip-evaluation", cache_policy=NO_CACHE)
def note_unchanged(config: RagConfig, report: IngestReport) -> dict:
    """Nothing was built: say so (the live alias stays where it is)."""
    status = operations.index_status(config)
    get_run_logger().info("index %s unchanged (%s); live alias %s -> %s", report.collection, report.status, status["alias"], status["live"])
    return {"collection": report.collection, "live_collection": status["live"], "evaluated": False}


@task(name="rollback-index", cache_policy=NO_CACHE)
def rollback_index(config: RagConfig, to: str | None = None) -> dict:
    result = operations.rollback_index(config, to)
    create_markdown_artifact(f"# RAG rollback\n\nalias `{result['alias']}`: `{result['from']}` → `{result['to']}`", key="rag-rollback")
    return result


@task(name="answer-question", cache_policy=NO_CACHE)
def answer_question(config: RagConfig, question: str) -> Answer:
    answer = operations.answer_question(config, question)
    get_run_logger().info("%s answer in %.0f ms (+%.0f ms retrieval), flagged chunks: %d", answer.method, answer.latency_ms, answer.retrieval_ms, len(answer.flagged_chunks))
    return answer
