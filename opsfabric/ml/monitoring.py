"""Monitoring a production batch: score it with the champion, measure drift and performance, decide on retraining.

The verdict and its evidence (Evidently HTML, per-feature scores, the batch as an MLflow dataset
input with its DVC md5) go to one MLflow run per batch in the monitoring experiment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from opsfabric import tracking
from opsfabric.ml.champion import Champion
from opsfabric.ml.contract import DatasetContract
from opsfabric.ml.dataset import file_md5, read_table
from opsfabric.ml.drift import DriftReport, compute_drift, write_drift_report
from opsfabric.ml.gate import Decision, should_retrain
from opsfabric.ml.model import evaluate_model
from opsfabric.ml.scoring import score_frame
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage

MONITORING_EXPERIMENT = "ml-monitoring"


@dataclass
class MonitorOutcome:
    """A batch's drift verdict, with where its evidence was written."""

    batch: str
    champion_version: str
    report: DriftReport
    decision: Decision
    report_json: str
    scored_path: str
    mlflow_run_id: str | None = None


def monitor_batch(
    settings: Settings,
    batch_path: Path,
    contract: DatasetContract,
    out_dir: Path,
    *,
    champion: Champion,
    lineage: Lineage | None = None,
) -> MonitorOutcome:
    """Score a batch with the champion, run Evidently drift and performance checks, decide on retraining.

    Args:
        champion: the model (from the registry, or the DVC pipeline's local model), with its
            reference score (None: performance is not checked) and decision threshold.
        lineage: when given, the verdict is logged to an MLflow run in the monitoring experiment.
    """
    batch = Path(batch_path).stem
    reference_path = settings.path(settings.dataset.reference)
    reference = read_table(reference_path)
    current = read_table(batch_path)
    spec = contract.spec
    scored_reference = score_frame(champion.model, reference, spec, threshold=champion.decision_threshold)
    scored_current = score_frame(champion.model, current, spec, threshold=champion.decision_threshold)
    metric = settings.ml.gate.metric
    has_labels = spec.target in current.columns and current[spec.target].notna().all()
    current_score = evaluate_model(champion.model, current, spec, threshold=champion.decision_threshold)[metric] if has_labels else None
    report = compute_drift(
        scored_reference,
        scored_current,
        spec,
        batch=batch,
        metric=metric,
        reference_score=champion.reference_score if has_labels else None,
        current_score=current_score,
        sample=settings.ml.drift.sample_rows,
        html_path=out_dir / f"{batch}.html",
    )
    decision = should_retrain(report.summary(), settings.ml.drift)
    report_json = write_drift_report(report, out_dir / f"{batch}.json", decision=decision.to_dict())
    scored_path = out_dir / f"{batch}.scored.parquet"
    scored_current.to_parquet(scored_path, index=False)
    run_id = None
    if lineage is not None:
        run_id = log_monitoring_run(
            settings, report, decision, champion.version, lineage, batch=(Path(batch_path), current), reference=(reference_path, reference)
        )
    return MonitorOutcome(
        batch=batch,
        champion_version=champion.version,
        report=report,
        decision=decision,
        report_json=str(report_json),
        scored_path=str(scored_path),
        mlflow_run_id=run_id,
    )


def log_monitoring_run(
    settings: Settings,
    report: DriftReport,
    decision: Decision,
    champion_version: str,
    lineage: Lineage,
    *,
    batch: tuple[Path, pd.DataFrame],
    reference: tuple[Path, pd.DataFrame],
) -> str:
    """One MLflow run per monitored batch: drift metrics, Evidently HTML, verdict, and both tables as inputs."""
    from mlflow.entities import Metric

    batch_path, batch_frame = batch
    reference_path, reference_frame = reference
    batch_md5 = file_md5(batch_path)
    lineage = replace(lineage, data_md5={**lineage.data_md5, batch_path.stem: batch_md5})
    tags = {"opsfabric.batch": report.batch, "opsfabric.champion_version": champion_version, "drift.retrain": str(decision.approved)}
    with tracking.mlflow_run(settings, MONITORING_EXPERIMENT, f"monitor-{report.batch}", lineage, tags=tags) as run:
        tracking.log_dataset(run, batch_frame, name=batch_path.stem, source=batch_path, md5=batch_md5, context="monitoring")
        tracking.log_dataset(run, reference_frame, name=reference_path.stem, source=reference_path, md5=file_md5(reference_path), context="reference")
        values = {"drift_share": report.drift_share, "n_drifted_features": len(report.drifted_features)}
        values |= {f"drift_score.{feature.column}": feature.score for feature in report.features}
        if report.current_score is not None:
            values[f"current_{report.metric}"] = report.current_score
        if report.reference_score is not None:
            values[f"reference_{report.metric}"] = report.reference_score
        now = int(time.time() * 1000)
        run.client.log_batch(run.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
        if report.html_path:
            run.client.log_artifact(run.run_id, report.html_path, "evidently")
        run.client.log_dict(run.run_id, report.to_dict() | {"decision": decision.to_dict()}, "drift_report.json")
        run.client.log_text(run.run_id, report.to_markdown(decision.reasons, decision.approved), "drift_summary.md")
    return run.run_id

