"""Train a candidate on the reference batch and send it through the promotion gate."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from flows.runners import configured_task_runner, flow_settings
from opsfabric.ml.contract import DatasetContract
from opsfabric.settings import Settings
from tasks.common import current_lineage, retrying, run_dir
from tasks.data import prepare_dataset, validate_file
from tasks.training import gate_and_register, prepare_training_sets, train_candidate


def train_and_gate(settings: Settings, reference: Path, contract: DatasetContract) -> dict:
    """split → train + log to MLflow → gate → register (alias moves only if better)."""
    sets = prepare_training_sets(settings, contract)
    lineage = current_lineage(settings, [reference])
    candidate = train_candidate(settings, sets, contract, lineage, "train-reference")
    outcome = retrying(gate_and_register, settings)(settings, candidate, sets.evaluation, contract, lineage)
    return outcome.summary() | {"run_id": candidate.run_id}


@flow(name="train", task_runner=configured_task_runner(), log_prints=True)
def train_flow(config_files: list[str] | None = None) -> dict:
    """validate reference → split → train → gate → register.

    Args:
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
    """
    settings = flow_settings(config_files)
    files, contract = prepare_dataset(settings)
    validate_file(settings, files["reference"], contract, run_dir(settings, "validation"))
    return train_and_gate(settings, files["reference"], contract)


def main(args: list[str]) -> None:
    """``python -m flows.train [--config FILE]``: train on the reference batch and gate the candidate."""
    from flows.train import train_flow  # imported after --config is in the environment: it picks the task runner

    print(json.dumps(train_flow(), indent=2, default=str))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
