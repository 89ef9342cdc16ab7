"""RAG ingestion tasks: golden set, corpus → new index version, MLflow record, Prefect artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from opsfabric.rag import ingest, records
from opsfabric.rag.ingest import IngestReport
from opsfabric.rag.settings import RagConfig
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage


def rag_lineage(config: RagConfig, corpus_hash: str | None) -> Lineage:
    """Lineage of the calling flow run for RAG MLflow runs (commit, corpus hash, config hash, run id/url)."""
    return records.rag_lineage(config, corpus_hash, flow_run_id=flow_run.get_id(), flow_run_url=flow_run.get_flow_run_ui_url())


@task(name="rag-config", cache_policy=NO_CACHE)
def load_rag_config(settings: Settings) -> RagConfig:
    """The run's RAG configuration (``settings.rag`` is validated when the settings load)."""
    return RagConfig(settings)


@task(name="prepare-golden-set", cache_policy=NO_CACHE)
def prepare_golden(config: RagConfig) -> str:
    """Validate the golden QA set against the cleaned corpus; write the prepared table."""
    from opsfabric.rag.golden import prepare_golden_set, read_golden_source

    path = prepare_golden_set(read_golden_source(config.golden_source), ingest.load_configured_corpus(config), config.golden_source, config.golden_prepared)
    get_run_logger().info("golden set validated: %s", path)
    return str(path)


@task(name="ingest-corpus", cache_policy=NO_CACHE)
def ingest_corpus(config: RagConfig) -> tuple[IngestReport, str | None]:
    """Build the next index version (incremental, resumable) and record it in MLflow.

    No retries: a failed build is resumed by the next run, and its partial collection never goes live.
    """
    logger = get_run_logger()
    report = ingest.ingest_corpus(config, show_progress=True)
    for bad in report.bad_documents:
        logger.warning("bad document skipped: %s: %s", bad["path"], bad["reason"])
    if report.resumed_because:
        logger.warning("resumed %s: %s", report.collection, report.resumed_because)
    run_id = records.log_index_version(config, report, rag_lineage(config, report.corpus_hash))
    logger.info("ingest %s: %s", report.status, report.summary())
    create_markdown_artifact(ingest_markdown(report, run_id), key="rag-ingest", description="Documents and chunks of this index build")
    return report, run_id


def ingest_markdown(report: IngestReport, run_id: str | None) -> str:
    s = report.summary()
    lines = [
        f"# RAG ingest: {report.status} `{report.collection}`",
        "",
        "| documents seen | added | changed | removed | unchanged | bad | chunks embedded | chunks copied | chunks in version |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s['documents_seen']} | {s['documents_added']} | {s['documents_changed']} | {s['documents_removed']} | "
        f"{s['documents_unchanged']} | {s['bad_documents']} | {s['chunks_embedded']} | {s['chunks_copied']} | {s['chunks_total']} |",
        "",
        f"- base version: `{report.base_collection}`; corpus hash `{report.corpus_hash}`; index config `{report.config_hash}`",
        f"- {report.seconds:.1f} s, {report.chunks_per_second:.1f} chunks/s embedded; MLflow run `{run_id}`",
    ]
    if report.resumed_because:
        lines.append(f"- resumed an interrupted build: {report.resumed_because}")
    for label, items in (("Added", report.documents_added), ("Changed", report.documents_changed), ("Removed", report.documents_removed)):
        if items:
            lines.append(f"- {label}: " + ", ".join(f"`{d}`" for d in items[:20]) + (" …" if len(items) > 20 else ""))
    for bad in report.bad_documents:
        lines.append(f"- **bad document** `{bad['path']}`: {bad['reason']}")
    for doc in report.injection_flagged:
        lines.append(f"- **instruction-like text flagged** in `{doc}` (kept as data, never followed)")
    return "\n".join(lines)
