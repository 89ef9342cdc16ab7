"""RAG evaluation, gate, rollback and question-answering tasks."""

from __future__ import annotations

from functools import partial

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.rag import operations, promotion, records
from opsfabric.rag.answer import Answer, describe_labels
from opsfabric.rag.evaluation import EvalResult
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
            f"- answers: {answers_by(verdict.candidate)}",
            f"- LLM judge: {judged_by(verdict.candidate)}",
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


def answers_by(result: EvalResult) -> str:
    """What wrote an evaluation's answers, in words (model file and digest, server, sampling, prompt)."""
    if result.answer_method != "llm":
        return "extractive (retrieved sentences copied verbatim; no language model)"
    return describe_labels(result.labels)


def judged_by(result: EvalResult) -> str:
    """Who judged faithfulness and answer relevancy, and what its scores are worth."""
    if not result.llm_judge:
        return "none (no LLM endpoint configured, or rag.llm.judge: false): faithfulness and answer relevancy not measured"
    j = result.judge_labels
    sha = str(j.get("opsfabric.model.sha256", "?"))[:16]
    return (f"{j.get('gen_ai.request.model')} ({j.get('opsfabric.model.file', 'file unknown')} sha256:{sha}) on "
            f"{j.get('opsfabric.server', '?')}, temperature 0, seed {j.get('gen_ai.request.seed')}. {j.get('opsfabric.judge.note', '')}")


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
    logger = get_run_logger()
    logger.info("%s answer in %.0f ms (+%.0f ms retrieval), flagged chunks: %d, invalid citations: %d%s", answer.method, answer.latency_ms,
                answer.retrieval_ms, len(answer.flagged_chunks), len(answer.invalid_citations), ", cites nothing" if answer.uncited else "")
    if answer.method == "llm":
        logger.info("%s", describe_labels(answer.labels))
    return answer
