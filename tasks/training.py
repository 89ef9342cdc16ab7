"""Training and promotion tasks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.ml import promotion, training
from opsfabric.ml.contract import DatasetContract
from opsfabric.ml.promotion import GateOutcome
from opsfabric.ml.training import CandidateRun, TrainingSets
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage


@task(name="prepare-training-sets", cache_policy=NO_CACHE)
def prepare_training_sets(settings: Settings, contract: DatasetContract) -> TrainingSets:
    """Seeded, stratified train/eval split of the reference batch."""
    return training.reference_training_sets(settings, contract)


@task(name="prepare-retraining-sets", cache_policy=NO_CACHE)
def prepare_retraining_sets(settings: Settings, contract: DatasetContract, recent_paths: list[Path]) -> TrainingSets:
    """Reference + recent data to train on; held-out recent data to judge candidate and champion."""
    return training.retraining_sets(settings, contract, [Path(p) for p in recent_paths])


@task(name="train-candidate", cache_policy=NO_CACHE)
def train_candidate(
    settings: Settings,
    sets: TrainingSets,
    contract: DatasetContract,
    lineage: Lineage,
    run_name: str,
    extra_tags: dict[str, str] | None = None,
) -> CandidateRun:
    """Fit and log a candidate to MLflow (params, metrics, data sets, model with signature)."""
    candidate = training.train_and_log(settings, sets, contract, lineage=lineage, run_name=run_name, extra_tags=extra_tags)
    get_run_logger().info("candidate run %s: %s", candidate.run_id, candidate.metrics)
    return candidate


@task(name="gate-and-register", cache_policy=NO_CACHE)
def gate_and_register(
    settings: Settings, candidate: CandidateRun, evaluation: pd.DataFrame, contract: DatasetContract, lineage: Lineage
) -> GateOutcome:
    """Register the candidate; move the champion alias only if it beats the champion on the same data.

    Safe to retry (call it through ``tasks.common.retrying``): a failed attempt rolls the registry
    back, and every attempt judges against the champion it finds.
    """
    outcome = promotion.gate_and_register(settings, candidate, evaluation, contract.spec, lineage=lineage)
    summary = outcome.summary()
    get_run_logger().info("gate: %s", summary)
    champion_score = "none" if summary["champion_score"] is None else f"{summary['champion_score']:.4f}"
    create_markdown_artifact(
        "\n".join(
            [
                f"# Gate: {'PROMOTED' if outcome.promoted else 'rejected'}",
                "",
                f"- model: `{settings.ml.registered_model}` version {outcome.version}",
                f"- judged against champion: {outcome.champion_version or 'none'} (attempt {outcome.attempts})",
                f"- {summary['metric']}: candidate {summary['candidate_score']:.4f}, champion {champion_score}",
                *[f"- {r}" for r in outcome.decision.reasons],
                *[f"- repaired first: {r}" for r in outcome.repairs],
                f"- MLflow run: `{candidate.run_id}`",
            ]
        ),
        key="gate-decision",
        description="Promotion gate decision",
    )
    return outcome
