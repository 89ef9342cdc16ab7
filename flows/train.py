"""Train a candidate on the reference batch and send it through the promotion gate."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.runners import configured_task_runner, flow_settings
from opsfabric.ml.steps import DatasetContract
from opsfabric.settings import Settings
from tasks.common import current_lineage, run_dir
from tasks.data import prepare_dataset, validate_file
from tasks.training import gate_and_register, prepare_training_sets, train_candidate


def train_and_gate(settings: Settings, reference: Path, contract: DatasetContract) -> dict:
    """split → train + log to MLflow → gate → register (alias moves only if better)."""
    work_dir = run_dir(settings, "train")
    train, evaluation = prepare_training_sets(settings, contract)
    lineage = current_lineage(settings, [reference])
    candidate = train_candidate(settings, train, evaluation, contract, lineage, "train-reference", work_dir)
    outcome = gate_and_register(settings, candidate, contract, lineage)
    return outcome.summary() | {"run_id": candidate.run_id}


@flow(name="train", task_runner=configured_task_runner(), log_prints=True)
def train_flow(config_files: list[str] | None = None) -> dict:
    """validate reference → split → train → gate → register."""
    settings = flow_settings(config_files)
    files, contract = prepare_dataset(settings)
    validate_file(settings, files["reference"], contract, run_dir(settings, "validation"))
    return train_and_gate(settings, files["reference"], contract)


if __name__ == "__main__":
    print(train_flow())
