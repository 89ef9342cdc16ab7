"""Retrain on reference + recent data and send the candidate through the same gate."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from flows.runners import configured_task_runner, flow_settings, resolve_batch
from opsfabric.ml.contract import DatasetContract
from opsfabric.settings import Settings
from tasks.common import current_lineage, retrying, run_dir
from tasks.data import prepare_dataset, validate_file
from tasks.training import gate_and_register, prepare_retraining_sets, train_candidate


def retrain_and_gate(settings: Settings, reference: Path, recent: list[Path], contract: DatasetContract, reason: str) -> dict:
    """validate recent batches (labels required) → reference + recent → train → gate on recent held-out data."""
    work_dir = run_dir(settings, "retrain")
    for path in recent:
        validate_file(settings, path, contract, work_dir / "validation", require_label=True)
    sets = prepare_retraining_sets(settings, contract, recent)
    lineage = current_lineage(settings, [reference, *recent])
    candidate = train_candidate(
        settings,
        sets,
        contract,
        lineage,
        f"retrain-{'+'.join(p.stem for p in recent)}",
        {"opsfabric.trigger": "drift", "opsfabric.trigger_reason": reason[:4900]},
    )
    outcome = retrying(gate_and_register, settings)(settings, candidate, sets.evaluation, contract, lineage)
    return outcome.summary() | {"run_id": candidate.run_id, "recent_batches": [p.stem for p in recent]}


@flow(name="retrain", task_runner=configured_task_runner(), log_prints=True)
def retrain_flow(recent_batches: list[str], reason: str = "", config_files: list[str] | None = None) -> dict:
    """validate recent batches → reference + recent → train → gate against the champion on recent held-out data.

    Args:
        recent_batches: batch names (``batch_03``) or file paths of the recent, labelled data.
        reason: why retraining was triggered (logged on the MLflow run).
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
    """
    settings = flow_settings(config_files)
    files, contract = prepare_dataset(settings)
    recent = [resolve_batch(settings, b) for b in recent_batches]
    return retrain_and_gate(settings, files["reference"], recent, contract, reason)


def main(args: list[str]) -> None:
    """``python -m flows.retrain [--config FILE] [batch ...]``: retrain on the given batches (default batch_03)."""
    from flows.retrain import retrain_flow  # imported after --config is in the environment: it picks the task runner

    print(json.dumps(retrain_flow(args or ["batch_03"], "manual"), indent=2, default=str))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
