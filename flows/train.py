"""Train a candidate on the reference batch and send it through the promotion gate."""

from __future__ import annotations

from prefect import flow

from flows.runners import configured_task_runner, flow_settings
from tasks.common import current_lineage, run_dir
from tasks.data import generate_data, load_contract, validate_file
from tasks.training import gate_and_register, prepare_training_sets, train_candidate


@flow(name="train", task_runner=configured_task_runner(), log_prints=True)
def train_flow(config_files: list[str] | None = None) -> dict:
    """validate reference → split → train + log to MLflow → gate → register (alias moves only if better)."""
    settings = flow_settings(config_files)
    files = generate_data(settings)
    contract = load_contract(settings)
    work_dir = run_dir(settings, "train")
    validate_file(settings, files["reference"], contract, work_dir / "validation")
    train, evaluation = prepare_training_sets(settings, contract)
    lineage = current_lineage(settings, [files["reference"]])
    candidate = train_candidate(settings, train, evaluation, contract, lineage, "train-reference", work_dir)
    outcome = gate_and_register(settings, candidate, contract, lineage)
    return outcome.summary() | {"run_id": candidate.run_id}


if __name__ == "__main__":
    print(train_flow())
