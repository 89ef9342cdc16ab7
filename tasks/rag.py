"""RAG evaluation, gate, rollback and question-answering tasks."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.rag import steps
from opsfabric.rag.answer import Answer
from opsfabric.rag.ingest import IngestReport
from opsfabric.rag.settings import RagConfig
from tasks.ingest import rag_lineage


@task(name="evaluate-and-gate-index", cache_policy=NO_CACHE)
def evaluate_and_gate(config: RagConfig, collection: str, corpus_hash: str | None, index_run_id: str | None) -> steps.GateOutcome:
    """Evaluate a version on the golden set (and the live one on the same set); move the alias only if it passes."""
    outcome = steps.evaluate_and_gate(config, collection)
    run_id = steps.log_evaluation(config, outcome, rag_lineage(config, corpus_hash), index_run_id)
    summary = outcome.summary()
    get_run_logger().info("gate %s: %s", collection, summary)
    create_table_artifact(outcome.candidate.table(), key="rag-eval-per-question", description=f"Golden-set results of {collection}")
    scores = outcome.candidate.aggregates
    create_markdown_artifact(
        "\n".join(
            [
                f"# RAG gate: {'LIVE' if outcome.promoted else ('already live' if outcome.decision.approved else 'rejected')} `{collection}`",
                "",
                f"- alias `{config.rag.store.alias}` → `{outcome.live_collection}` (was `{outcome.decision.live}`)",
                f"- answers: {outcome.candidate.answer_method}; LLM judge: {outcome.candidate.llm_judge}",
                *[f"- {reason}" for reason in outcome.decision.reasons],
                "",
                "| metric | candidate | live |",
                "|---|---|---|",
                *[
                    f"| {k} | {v:.4f} | {outcome.live.aggregates.get(k, float('nan')):.4f} |" if outcome.live else f"| {k} | {v:.4f} | - |"
                    for k, v in sorted(scores.items())
                ],
                f"\nMLflow eval run `{run_id}`; retired: {outcome.retired or 'none'}",
            ]
        ),
        key="rag-gate",
        description="Index version gate decision",
    )
    return outcome


@task(name="skip-evaluation", cache_policy=NO_CACHE)
def note_unchanged(config: RagConfig, report: IngestReport) -> dict:
    """Nothing was built: say so (the live alias stays where it is)."""
    status = steps.index_status(config)
    get_run_logger().info("index %s unchanged (%s); live alias %s -> %s", report.collection, report.status, status["alias"], status["live"])
    return {"collection": report.collection, "live_collection": status["live"], "evaluated": False}


@task(name="rollback-index", cache_policy=NO_CACHE)
def rollback_index(config: RagConfig, to: str | None = None) -> dict:
    result = steps.rollback_index(config, to)
    create_markdown_artifact(f"# RAG rollback\n\nalias `{result['alias']}`: `{result['from']}` → `{result['to']}`", key="rag-rollback")
    return result


@task(name="answer-question", cache_policy=NO_CACHE)
def answer_question(config: RagConfig, question: str) -> Answer:
    answer = steps.answer_question(config, question)
    get_run_logger().info("%s answer in %.0f ms (+%.0f ms retrieval), flagged chunks: %d", answer.method, answer.latency_ms, answer.retrieval_ms, len(answer.flagged_chunks))
    return answer
