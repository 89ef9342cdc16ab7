"""Monitoring and scoring tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.ml import steps
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage


@task(name="load-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def load_champion(settings: Settings) -> tuple[Any, str, float | None]:
    """The registered champion model, its version and its eval score."""
    return steps.load_champion(settings)


@task(name="monitor-batch", cache_policy=NO_CACHE)
def monitor_batch(
    settings: Settings,
    batch_path: Path,
    contract: steps.DatasetContract,
    out_dir: Path,
    champion: tuple[Any, str, float | None],
    lineage: Lineage,
) -> steps.MonitorOutcome:
    """Evidently drift + performance on a batch, logged to MLflow and summarised as an artifact."""
    model, version, reference_score = champion
    outcome = steps.monitor_batch(
        settings,
        Path(batch_path),
        contract,
        out_dir,
        model=model,
        champion_version=version,
        champion_reference_score=reference_score,
        lineage=lineage,
    )
    get_run_logger().info(
        "drift %s: retrain=%s; %s", outcome.batch, outcome.decision.approved, "; ".join(outcome.decision.reasons)
    )
    create_markdown_artifact(
        outcome.report.to_markdown(outcome.decision.reasons, outcome.decision.approved)
        + f"\n\nMLflow run `{outcome.mlflow_run_id}`, HTML report `{outcome.report.html_path}`",
        key=f"drift-{outcome.batch.lower().replace('_', '-')}",
        description=f"Drift verdict for {outcome.batch}",
    )
    return outcome


@task(name="score-batch", cache_policy=NO_CACHE)
def score_batch(
    settings: Settings, champion: tuple[Any, str, float | None], contract: steps.DatasetContract, batch_path: Path, out_path: Path
) -> Path:
    """Score every row of a batch with the champion and write the predictions."""
    model, version, _ = champion
    path = steps.score_batch_file(settings, model, contract, Path(batch_path), out_path)
    get_run_logger().info("scored %s with champion v%s -> %s", batch_path, version, path)
    return path
