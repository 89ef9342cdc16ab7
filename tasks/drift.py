"""Monitoring and scoring tasks."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.ml import champion as champions
from opsfabric.ml import monitoring, scoring
from opsfabric.ml.champion import Champion
from opsfabric.ml.contract import DatasetContract
from opsfabric.ml.monitoring import MonitorOutcome
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage


@task(name="load-champion", cache_policy=NO_CACHE)
def load_champion(settings: Settings) -> Champion:
    """The registered champion (alias resolved once, loaded by version), its eval score and threshold.

    Safe to retry (``tasks.common.retrying``): it only reads.
    """
    champion = champions.load_champion(settings)
    get_run_logger().info("champion: %s version %s (threshold %s)", settings.ml.registered_model, champion.version, champion.decision_threshold)
    return champion


@task(name="monitor-batch", cache_policy=NO_CACHE)
def monitor_batch(
    settings: Settings, batch_path: Path, contract: DatasetContract, out_dir: Path, champion: Champion, lineage: Lineage
) -> MonitorOutcome:
    """Evidently drift + performance on a batch, logged to MLflow and summarised as an artifact."""
    outcome = monitoring.monitor_batch(settings, Path(batch_path), contract, out_dir, champion=champion, lineage=lineage)
    get_run_logger().info(
        "drift %s: retrain=%s; %s", outcome.batch, outcome.decision.approved, "; ".join(outcome.decision.reasons)
    )
    create_markdown_artifact(
        outcome.report.to_markdown(outcome.decision.reasons, outcome.decision.approved)
        + f"\n\nChampion version {outcome.champion_version}, MLflow run `{outcome.mlflow_run_id}`, HTML report `{outcome.report.html_path}`",
        key=f"drift-{outcome.batch.lower().replace('_', '-')}",
        description=f"Drift verdict for {outcome.batch}",
    )
    return outcome


@task(name="score-batch", cache_policy=NO_CACHE)
def score_batch(champion: Champion, contract: DatasetContract, batch_path: Path, out_path: Path) -> Path:
    """Score every row of a batch with the champion and write the predictions."""
    path = scoring.score_batch_file(champion.model, contract.spec, Path(batch_path), out_path, threshold=champion.decision_threshold)
    get_run_logger().info("scored %s with champion v%s -> %s", batch_path, champion.version, path)
    return path


@task(name="announce-drift", cache_policy=NO_CACHE)
def announce_drift(settings: Settings, outcome: MonitorOutcome, batch_path: Path, retrain_via: str, config_files: list[str] | None) -> str | None:
    """Emit ``opsfabric.drift.detected`` (dataset as resource, MLflow run and data hash related, verdict as payload).

    Under ``retrain_via: event`` the retrain deployment's automation reacts to it; otherwise it only
    records the verdict in the UI's event feed.
    """
    from opsfabric import events
    from opsfabric.ml.dataset import file_md5

    event = events.drift_detected_event(
        dataset=settings.dataset.name,
        batch=outcome.batch,
        batch_path=str(Path(batch_path).resolve()),
        batch_md5=file_md5(batch_path),
        drift_share=outcome.report.drift_share,
        drifted_features=list(outcome.report.drifted_features),
        reasons=list(outcome.decision.reasons),
        champion_version=outcome.champion_version,
        mlflow_run_id=outcome.mlflow_run_id,
        retrain_via=retrain_via,
        config_files=config_files,
    )
    event_id = events.emit(event)
    get_run_logger().info("emitted %s for %s (retrain via %s): event %s", events.DRIFT_DETECTED, outcome.batch, retrain_via, event_id)
    return event_id
