"""MLflow records of the RAG pipeline: one ``rag-index`` run per built version, one ``rag-eval`` run per verdict.

The registry and the alias are the truth about which version is live; these runs are the history
of how each version was built and judged. The registry links both ways: a version's
``mlflow_run_id`` (its index run) and ``eval_run_id`` (the eval run whose verdict was applied).
"""

from __future__ import annotations

import csv
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from opsfabric import tracking
from opsfabric.rag import versions
from opsfabric.rag.ingest import IngestReport
from opsfabric.rag.settings import RagConfig
from opsfabric.tracking import Lineage, TrackedRun

if TYPE_CHECKING:
    from opsfabric.rag.errors import StaleGateDecisionError
    from opsfabric.rag.evaluation import EvalResult
    from opsfabric.rag.promotion import GateOutcome, GateVerdict

INDEX_EXPERIMENT = "rag-index"
EVAL_EXPERIMENT = "rag-eval"
PER_QUESTION_TABLE = "eval/per_question.json"  # an MLflow table: the UI's artifact view and evaluation compare it


def rag_lineage(config: RagConfig, corpus_hash: str | None = None, *, flow_run_id: str | None = None, flow_run_url: str | None = None) -> Lineage:
    """Where a RAG run came from: commit, corpus hash, index config hash, flow run."""
    return Lineage(
        git_commit=tracking.git_commit(),
        flow_run_id=flow_run_id,
        flow_run_url=flow_run_url,
        data_md5={"rag_corpus": corpus_hash} if corpus_hash else {},
        config_hash=config.index_config_hash(),
    )


def _log(run: TrackedRun, run_id: str | None = None, *, params: dict | None = None, metrics: dict | None = None) -> None:
    """Params and metrics in one request (one SQLite transaction instead of one per value)."""
    import time

    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    run.client.log_batch(
        run_id or run.run_id,
        metrics=[Metric(key, float(value), stamp, 0) for key, value in (metrics or {}).items()],
        params=[Param(key, str(value)[:500]) for key, value in (params or {}).items()],
    )


def log_index_version(config: RagConfig, report: IngestReport, lineage: Lineage, extra_tags: dict | None = None) -> str | None:
    """One MLflow run per built index version (corpus hash, chunking, BM25 and embedding settings, counts); linked in the registry.

    An unchanged corpus built nothing: the existing version's run id is returned.
    """
    if report.status == "unchanged":
        return versions.VersionRegistry.load(config).get(report.collection).mlflow_run_id
    index_config = config.index_config()
    tags = {"rag.collection": report.collection, "rag.corpus_hash": report.corpus_hash, "rag.config_hash": report.config_hash, **(extra_tags or {})}
    with tracking.mlflow_run(config.settings, INDEX_EXPERIMENT, report.collection, lineage, tags) as run:
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
        counts = {f"ingest_{k}": v for k, v in report.summary().items() if isinstance(v, (int, float))}
        _log(run, params=params, metrics=counts)
        run.client.log_dict(run.run_id, report.to_dict(), "ingest/report.json")
    versions.record_index_run(config, report.collection, run.run_id)
    return run.run_id


@dataclass
class EvaluationRun:
    """One ``rag-eval`` run: a verdict's scores, per-question table and decision, then what became of it."""

    config: RagConfig
    run: TrackedRun
    index_run_id: str | None

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def log_verdict(self, verdict: "GateVerdict") -> None:
        import pandas as pd

        result, client = verdict.candidate, self.run.client
        client.set_tag(self.run_id, "rag.answer_method", result.answer_method)
        for key, value in label_tags(result).items():
            client.set_tag(self.run_id, key, value)
        params = {
            "collection": result.collection,
            "compared_with": verdict.live.collection if verdict.live else "none",
            "live_collection": verdict.live_collection or "none",
            "answer_method": result.answer_method,
            "llm_judge": result.llm_judge,
            "prompt_hash": result.prompt_hash or "none (extractive)",
            **{f"answer.{k}": v for k, v in result.labels.items()},
            **{f"judge.{k}": v for k, v in result.judge_labels.items()},
            **{f"retrieval.{k}": v for k, v in self.config.rag.retrieval.model_dump().items()},
            **{f"gate.{k}": v for k, v in self.config.rag.gate.model_dump().items()},
        }
        _log(self.run, params=params, metrics={**result.aggregates, "gate_approved": verdict.decision.approved})
        client.log_table(self.run_id, data=pd.DataFrame(result.table()), artifact_file=PER_QUESTION_TABLE)
        live_scores = verdict.live.aggregates if verdict.live else None
        client.log_dict(self.run_id, {**verdict.decision.to_dict(), "live_scores": live_scores}, "eval/decision.json")

    def log_outcome(self, outcome: "GateOutcome") -> None:
        client = self.run.client
        client.set_tag(self.run_id, "rag.gate.outcome", outcome.label)
        _log(self.run, metrics={"gate_promoted": outcome.promoted})
        client.log_dict(self.run_id, outcome.summary(), "eval/outcome.json")
        if self.index_run_id:  # the version's own run carries the scores of the verdict that was applied
            _log(self.run, self.index_run_id, metrics={f"eval_{k}": v for k, v in outcome.verdict.candidate.aggregates.items()})

    def log_stale(self, error: "StaleGateDecisionError") -> None:
        self.run.client.set_tag(self.run_id, "rag.gate.outcome", "stale")
        self.run.client.set_tag(self.run_id, "rag.gate.stale_reason", str(error)[:5000])


def label_tags(result: "EvalResult") -> dict[str, str]:
    """Tags naming what wrote and what judged an evaluation's answers (searchable in the MLflow UI)."""
    answer, judge = result.labels, result.judge_labels
    tags = {}
    if result.answer_method == "llm":
        tags |= {
            "rag.answer.model": answer.get("gen_ai.request.model", ""),
            "rag.answer.model_file": answer.get("opsfabric.model.file", "unknown"),
            "rag.answer.model_sha256": answer.get("opsfabric.model.sha256", "unknown"),
            "rag.answer.server": f"{answer.get('opsfabric.server', '?')} at {answer.get('opsfabric.server.url', '?')}",
            "rag.answer.sampling": f"temperature {answer.get('gen_ai.request.temperature')}, seed {answer.get('gen_ai.request.seed')}",
            "rag.answer.prompt": f"{answer.get('opsfabric.prompt.version')} sha256:{answer.get('opsfabric.prompt.sha256')}",
        }
    else:
        tags["rag.answer.model"] = "none: extractive answers (retrieved sentences, no language model)"
    if judge:
        tags |= {
            "rag.judge.model": judge.get("gen_ai.request.model", ""),
            "rag.judge.model_file": judge.get("opsfabric.model.file", "unknown"),
            "rag.judge.model_sha256": judge.get("opsfabric.model.sha256", "unknown"),
            "rag.judge.server": f"{judge.get('opsfabric.server', '?')} at {judge.get('opsfabric.server.url', '?')}",
            "rag.judge.note": judge.get("opsfabric.judge.note", ""),
        }
    return {k: str(v) for k, v in tags.items()}


@contextmanager
def evaluation_run(
    config: RagConfig, collection: str, lineage: Lineage, *, index_run_id: str | None = None, extra_tags: dict | None = None
) -> Iterator[EvaluationRun]:
    """A ``rag-eval`` run for one verdict on ``collection`` (FINISHED, or FAILED if the block raises).

    Args:
        index_run_id: the version's ``rag-index`` run; default: the one the registry links.
    """
    if index_run_id is None and (version := versions.VersionRegistry.load(config).find(collection)) is not None:
        index_run_id = version.mlflow_run_id
    tags = {"rag.collection": collection, "rag.index_run_id": index_run_id or "", **(extra_tags or {})}
    with tracking.mlflow_run(config.settings, EVAL_EXPERIMENT, f"eval-{collection}", lineage, tags) as run:
        yield EvaluationRun(config, run, index_run_id)


def write_table_csv(rows: list[dict], path: Path) -> Path:
    """Rows of dicts as CSV, columns in order of first appearance."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
