"""Training and registry tasks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.ml import steps
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage


@task(name="train-candidate", cache_policy=NO_CACHE)
def train_candidate(
    settings: Settings,
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    contract: steps.DatasetContract,
    lineage: Lineage,
    run_name: str,
    work_dir: Path,
    extra_tags: dict[str, str] | None = None,
) -> steps.CandidateRun:
    """Fit and log a candidate to MLflow (params, metrics, eval set, model with signature)."""
    candidate = steps.train_and_log(
        settings, train, evaluation, contract, lineage=lineage, run_name=run_name, work_dir=work_dir, extra_tags=extra_tags
    )
    get_run_logger().info("candidate run %s: %s", candidate.run_id, candidate.metrics)
    return candidate


@task(
    name="gate-and-register",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
)
def gate_and_register(
    settings: Settings, candidate: steps.CandidateRun, contract: steps.DatasetContract, lineage: Lineage
) -> steps.GateOutcome:
    """Register the candidate; move the champion alias only if it beats the champion on the same data.

    A failed attempt rolls the registry back, so a retry starts from the same state.
    """
    outcome = steps.gate_and_register(settings, candidate, contract, lineage=lineage)
    summary = outcome.summary()
    get_run_logger().info("gate: %s", summary)
    create_markdown_artifact(
        "\n".join(
            [
                f"# Gate: {'PROMOTED' if outcome.decision.approved else 'rejected'}",
                "",
                f"- model: `{settings.ml.registered_model}` version {summary['version']}",
                f"- previous champion: {summary['previous_champion']}",
                f"- {summary['metric']}: candidate {summary['candidate_score']:.4f}, champion "
                + ("none" if summary["champion_score"] is None else f"{summary['champion_score']:.4f}"),
                *[f"- {r}" for r in outcome.decision.reasons],
                f"- MLflow run: `{candidate.run_id}`",
            ]
        ),
        key="gate-decision",
        description="Promotion gate decision",
    )
    return outcome


@task(name="prepare-training-sets", cache_policy=NO_CACHE)
def prepare_training_sets(settings: Settings, contract: steps.DatasetContract) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded, stratified train/eval split of the reference batch."""
    return steps.reference_training_sets(settings, contract)


@task(name="prepare-retraining-sets", cache_policy=NO_CACHE)
def prepare_retraining_sets(
    settings: Settings, contract: steps.DatasetContract, recent_paths: list[Path]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference + recent data to train on; held-out recent data to judge candidate and champion."""
    return steps.retraining_sets(settings, contract, [Path(p) for p in recent_paths])
