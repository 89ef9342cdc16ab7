"""Retrain on reference + recent data and send the candidate through the same gate."""

from __future__ import annotations

from prefect import flow

from flows.runners import configured_task_runner, flow_settings, resolve_batch
from tasks.common import current_lineage, run_dir
from tasks.data import prepare_dataset, validate_file
from tasks.training import gate_and_register, prepare_retraining_sets, train_candidate


@flow(name="retrain", task_runner=configured_task_runner(), log_prints=True)
def retrain_flow(recent_batches: list[str], reason: str = "", config_files: list[str] | None = None) -> dict:
    """validate recent batches → reference + recent → train → gate against the champion on recent held-out data.

    Args:
        recent_batches: batch names (``batch_03``) or file paths of the recent, labelled data.
        reason: why retraining was triggered (logged on the MLflow run).
        config_files: extra YAML overlays.
    """
    settings = flow_settings(config_files)
    files, contract = prepare_dataset(settings)
    work_dir = run_dir(settings, "retrain")
    recent = [resolve_batch(settings, b) for b in recent_batches]
    for path in recent:
        validate_file(settings, path, contract, work_dir / "validation", require_label=True)
    train, evaluation = prepare_retraining_sets(settings, contract, recent)
    lineage = current_lineage(settings, [files["reference"], *recent])
    candidate = train_candidate(
        settings,
        train,
        evaluation,
        contract,
        lineage,
        f"retrain-{'+'.join(p.stem for p in recent)}",
        work_dir,
        {"opsfabric.trigger": "drift", "opsfabric.trigger_reason": reason[:4900]},
    )
    outcome = gate_and_register(settings, candidate, contract, lineage)
    return outcome.summary() | {"run_id": candidate.run_id, "recent_batches": [p.stem for p in recent]}


if __name__ == "__main__":
    import sys

    print(retrain_flow(sys.argv[1:] or ["batch_03"]))
