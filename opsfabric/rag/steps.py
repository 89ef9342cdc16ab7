"""The RAG pipeline's steps: settings in, dataclasses out, I/O at the edges, no Prefect import.

Prefect tasks (``tasks/ingest.py``, ``tasks/rag.py``) and the DVC stages
(``python -m opsfabric.rag.stages``) call these functions: one implementation of every step.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsfabric import tracking
from opsfabric.rag import store
from opsfabric.rag.answer import Answer, make_answerer
from opsfabric.rag.embeddings import make_embedding
from opsfabric.rag.evaluation import EvalResult, GoLiveDecision, evaluate_version, should_go_live
from opsfabric.rag.golden import prepare_golden_set, read_golden, read_golden_source
from opsfabric.rag.ingest import IngestReport, build_index_version, load_configured_corpus
from opsfabric.rag.retrieval import Retriever
from opsfabric.rag.errors import IndexVersionError
from opsfabric.rag.settings import RagConfig
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage

log = logging.getLogger(__name__)

INDEX_EXPERIMENT = "rag-index"
EVAL_EXPERIMENT = "rag-eval"


def rag_config(settings: Settings) -> RagConfig:
    return RagConfig(settings)


def embedding_model(config: RagConfig) -> Any:
    return make_embedding(config.rag.embedding, config.secret(config.rag.embedding.api_key_env))


def rag_lineage(config: RagConfig, corpus_hash: str | None = None, *, flow_run_id: str | None = None, flow_run_url: str | None = None) -> Lineage:
    return Lineage(
        git_commit=tracking.git_commit(config.settings.project_root),
        flow_run_id=flow_run_id,
        flow_run_url=flow_run_url,
        data_md5={"rag_corpus": corpus_hash} if corpus_hash else {},
        config_hash=config.index_config_hash(),
    )


# ---- golden set ------------------------------------------------------------------------------
def prepare_golden(config: RagConfig) -> Path:
    """Validate the golden JSONL against the cleaned corpus and write the prepared Parquet."""
    items = read_golden_source(config.golden_source)
    corpus = load_configured_corpus(config)
    return prepare_golden_set(items, corpus, config.golden_source, config.golden_prepared)


# ---- ingestion -------------------------------------------------------------------------------
def ingest_corpus(config: RagConfig, embed_model: Any | None = None, *, show_progress: bool = True) -> IngestReport:
    """Load the corpus (bad-document policy applied before any write) and build the next index version."""
    corpus = load_configured_corpus(config)
    report = build_index_version(config, corpus, embed_model or embedding_model(config), show_progress=show_progress)
    report.needs_evaluation = needs_evaluation(config, report)
    return report


def log_index_version(config: RagConfig, report: IngestReport, lineage: Lineage, extra_tags: dict | None = None) -> str | None:
    """One MLflow run per built index version: corpus hash, chunking, BM25 and embedding settings, counts."""
    if report.status == "unchanged":
        return store.VersionRegistry.load(config).get(report.collection).mlflow_run_id
    client = tracking.mlflow_client(config.settings)
    run_id = tracking.start_run(
        config.settings, INDEX_EXPERIMENT, report.collection, lineage,
        tags={"rag.collection": report.collection, "rag.corpus_hash": report.corpus_hash, "rag.config_hash": report.config_hash, **(extra_tags or {})},
    )
    try:
        index_config = config.index_config()
        params = {
            "collection": report.collection,
            "base_collection": report.base_collection or "",
            "pipeline_version": index_config["pipeline_version"],
            "cleaner_version": index_config["cleaner_version"],
            **{f"chunking.{k}": v for k, v in index_config["chunking"].items()},
            **{f"keyword.{k}": v for k, v in index_config["keyword"].items()},
            **{f"embedding.{k}": v for k, v in index_config["embedding"].items()},
            "corpus_path": config.rag.corpus.path,
        }
        for key, value in params.items():
            client.log_param(run_id, key, value)
        for key, value in report.summary().items():
            if isinstance(value, (int, float)):
                client.log_metric(run_id, f"ingest_{key}", value)
        client.log_dict(run_id, report.to_dict(), "ingest/report.json")
    except BaseException:
        tracking.end_run(config.settings, run_id, "FAILED")
        raise
    tracking.end_run(config.settings, run_id, "FINISHED")
    registry = store.VersionRegistry.load(config)
    registry.get(report.collection).mlflow_run_id = run_id
    registry.save()
    return run_id


# ---- evaluation and the gate -------------------------------------------------------------------
def needs_evaluation(config: RagConfig, report: IngestReport) -> bool:
    """A version needs an evaluation unless it was already judged (live or rejected)."""
    return store.VersionRegistry.load(config).get(report.collection).status not in {"live", "rejected"}


def evaluate_collection(config: RagConfig, collection: str, embed_model: Any | None = None, *, mode: str | None = None) -> EvalResult:
    """Evaluate one collection on the golden set with the configured retrieval and answerer."""
    embed_model = embed_model or embedding_model(config)
    client = store.open_qdrant(config)
    retriever = Retriever(client, collection, embed_model, config.rag.retrieval)
    golden = read_golden(config.golden_prepared, config.golden_source)
    return evaluate_version(config, retriever, make_answerer(config, embed_model), golden, mode=mode)


@dataclass
class GateOutcome:
    decision: GoLiveDecision
    candidate: EvalResult
    live: EvalResult | None
    promoted: bool
    live_collection: str | None
    retired: list[str]

    def summary(self) -> dict:
        return {
            "candidate": self.decision.candidate,
            "approved": self.decision.approved,
            "promoted": self.promoted,
            "live_collection": self.live_collection,
            "previous_live": self.decision.live,
            "reasons": self.decision.reasons,
            "scores": {k: round(v, 4) for k, v in self.candidate.aggregates.items()},
            "retired": self.retired,
        }


def evaluate_and_gate(config: RagConfig, collection: str, embed_model: Any | None = None, *, apply: bool = True) -> GateOutcome:
    """Evaluate ``collection`` (and the live version, on the same golden set), decide, and move the alias if approved.

    The live version is compared only when today's queries can search it (same embedding model and
    tokenizer); otherwise the decision rests on the thresholds and says why. With ``apply=False``
    (DVC stage) the decision is computed and returned, and nothing is written or moved.
    """
    embed_model = embed_model or embedding_model(config)
    client = store.open_qdrant(config)
    registry = store.VersionRegistry.load(config)
    store.check_servable(config, registry.get(collection), "evaluate and gate")
    live = store.reconcile_live(client, config, registry) if apply else store.live_collection(client, config.rag.store.alias)
    candidate = evaluate_collection(config, collection, embed_model)
    live_result, not_compared = None, None
    if live and live != collection:
        built_with = _recorded_index_config(registry, live)
        if built_with is None:
            not_compared = f"live {live} is not in the registry {registry.path}: not compared"
        elif not store.query_compatible(built_with, config.index_config()):
            not_compared = f"live {live} was built with another embedding model or pipeline version (tokenizer): scores not comparable, not compared"
        else:
            live_result = evaluate_collection(config, live, embed_model)
    decision = should_go_live(
        candidate.aggregates, config.rag.gate, live_scores=live_result.aggregates if live_result else None,
        candidate=collection, live=live, not_compared=not_compared,
    )
    log.info("gate for %s: %s %s", collection, "GO LIVE" if decision.approved else "rejected", decision.reasons)
    retired: list[str] = []
    promoted = False
    if apply:
        version = registry.get(collection)
        version.eval_scores = {k: round(v, 6) for k, v in candidate.aggregates.items()}
        version.decision = decision.to_dict()
        if decision.approved and live != collection:
            store.promote(client, config, registry, collection)
            promoted = True
        elif not decision.approved and live != collection:
            version.status = "rejected"
        elif not decision.approved:
            log.warning("live version %s no longer passes the gate: it stays live (roll back or build a fix)", collection)
        registry.save()
        retired = store.retire_old_versions(client, config, registry)
    return GateOutcome(decision, candidate, live_result, promoted, store.live_collection(client, config.rag.store.alias), retired)


def _recorded_index_config(registry: store.VersionRegistry, collection: str) -> dict | None:
    try:
        return registry.get(collection).index_config
    except IndexVersionError:
        return None


def log_evaluation(config: RagConfig, outcome: GateOutcome, lineage: Lineage, index_run_id: str | None, extra_tags: dict | None = None) -> str:
    """An MLflow run in ``rag-eval`` (per-question table, aggregates, decision); scores also on the index run."""
    client = tracking.mlflow_client(config.settings)
    result = outcome.candidate
    run_id = tracking.start_run(
        config.settings, EVAL_EXPERIMENT, f"eval-{result.collection}", lineage,
        tags={"rag.collection": result.collection, "rag.answer_method": result.answer_method, "rag.index_run_id": index_run_id or "", **(extra_tags or {})},
    )
    try:
        params = {
            "collection": result.collection,
            "answer_method": result.answer_method,
            "llm_judge": result.llm_judge,
            "prompt_hash": result.prompt_hash or "none (extractive)",
            **{f"retrieval.{k}": v for k, v in config.rag.retrieval.model_dump().items()},
            **{f"gate.{k}": v for k, v in config.rag.gate.model_dump().items()},
        }
        for key, value in params.items():
            client.log_param(run_id, key, str(value)[:500])
        for key, value in result.aggregates.items():
            client.log_metric(run_id, key, value)
            if index_run_id:
                client.log_metric(index_run_id, f"eval_{key}", value)
        client.log_metric(run_id, "gate_approved", float(outcome.decision.approved))
        client.log_dict(run_id, outcome.summary(), "eval/decision.json")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "per_question.csv"
            write_table_csv(result.table(), path)
            client.log_artifact(run_id, str(path), "eval")
        client.log_dict(run_id, {"rows": result.rows}, "eval/per_question.json")
    except BaseException:
        tracking.end_run(config.settings, run_id, "FAILED")
        raise
    tracking.end_run(config.settings, run_id, "FINISHED")
    return run_id


def write_table_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---- operations ---------------------------------------------------------------------------------
def rollback_index(config: RagConfig, to: str | None = None) -> dict:
    """Point the live alias back at the previous live version (or ``to``)."""
    client = store.open_qdrant(config)
    registry = store.VersionRegistry.load(config)
    previous, current = store.rollback(client, config, registry, to)
    log.warning("rolled back alias %s: %s -> %s", config.rag.store.alias, previous, current)
    return {"alias": config.rag.store.alias, "from": previous, "to": current}


def index_status(config: RagConfig) -> dict:
    client = store.open_qdrant(config)
    registry = store.VersionRegistry.load(config)
    return {
        "alias": config.rag.store.alias,
        "live": store.live_collection(client, config.rag.store.alias),
        "live_history": registry.live_history,
        "versions": [
            {"collection": v.collection, "status": v.status, "corpus_hash": v.corpus_hash, "config_hash": v.config_hash, "scores": v.eval_scores}
            for v in registry.versions
        ],
    }


def answer_question(config: RagConfig, question: str, embed_model: Any | None = None, *, collection: str | None = None) -> Answer:
    """Answer from the live alias (or a given collection) with citations, latency and cost."""
    import time

    embed_model = embed_model or embedding_model(config)
    client = store.open_qdrant(config)
    target = store.resolve_collection(client, collection or config.rag.store.alias)
    built_with = _recorded_index_config(store.VersionRegistry.load(config), target)
    if built_with is not None and not store.query_compatible(built_with, config.index_config()):
        raise IndexVersionError(
            f"{target} was built with another embedding model or tokenizer than the current configuration "
            f"({built_with.get('embedding')} vs {config.index_config()['embedding']}): queries would not match its vectors"
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
    return json.dumps(payload, indent=2, sort_keys=True, default=str)


def newest_collection(config: RagConfig) -> str:
    """The newest finished build with the current index config (what rag-eval evaluates by default)."""
    version = store.VersionRegistry.load(config).latest_complete(config.index_config_hash())
    if version is None:
        raise IndexVersionError(f"no built index version for the current index config {config.index_config_hash()}: run the ingest flow first")
    return version.collection
