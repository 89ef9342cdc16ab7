"""DVC stage entry points: ``python -m opsfabric.ml.stages <stage>``.

Each stage calls the same step functions as the Prefect flows (``opsfabric.ml.contract``,
``training``, ``monitoring``) and writes the outputs ``dvc.yaml`` declares. Output locations are the module constants below, named once
here and in ``dvc.yaml`` (a test checks the two agree).

The DVC pipeline is a DAG: it trains on the reference batch and writes drift verdicts for every
batch. Registry promotion and drift-triggered retraining are the Prefect flows' job (loops and
decisions over time do not fit a DAG).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from opsfabric.runtime_env import configure_runtime_env
from opsfabric.stage_outputs import write_json

MODEL_DIR = Path("models/model")
VALIDATION_DIR = Path("reports/validation")
DRIFT_DIR = Path("reports/drift")
TRAIN_METRICS = Path("metrics/train.json")
EVALUATE_METRICS = Path("metrics/evaluate.json")
DRIFT_METRICS = Path("metrics/drift.json")
ROC_PLOT = Path("plots/roc.csv")
BATCH_PLOT = Path("plots/batch_performance.csv")
DVC_EXPERIMENT_TAG = {"opsfabric.source": "dvc"}


def stage_generate(settings) -> None:
    from opsfabric.ml.contract import generate_dataset

    generate_dataset(settings, overwrite=True)


def stage_validate(settings) -> None:
    import shutil

    from opsfabric.ml.contract import dataset_paths, load_contract, validate_file

    contract = load_contract(settings)
    out_dir = settings.path(VALIDATION_DIR)
    shutil.rmtree(out_dir, ignore_errors=True)
    for path in dataset_paths(settings).values():
        validate_file(settings, path, contract, out_dir)  # raises (non-zero exit) on a broken file
    (out_dir / "schema.json").write_text(json.dumps(contract.to_dict(), indent=2, default=str) + "\n")


def stage_train(settings) -> None:
    import shutil

    import mlflow

    from opsfabric import tracking
    from opsfabric.ml.contract import load_contract
    from opsfabric.ml.lineage import lineage_for
    from opsfabric.ml.training import reference_training_sets, train_and_log

    contract = load_contract(settings)
    sets = reference_training_sets(settings, contract)
    lineage = lineage_for(settings, data_files=[settings.path(settings.dataset.reference)])
    candidate = train_and_log(settings, sets, contract, lineage=lineage, run_name="dvc-train", extra_tags=DVC_EXPERIMENT_TAG)
    model = tracking.load_sklearn_model(settings, candidate.model_uri)
    model_dir = settings.path(MODEL_DIR)
    shutil.rmtree(model_dir, ignore_errors=True)
    mlflow.sklearn.save_model(
        model,
        str(model_dir),
        serialization_format="cloudpickle",
        pip_requirements=tracking.model_requirements(),
        # The threshold travels with the model, as it does on a registered version (tag).
        metadata={"decision_threshold": candidate.decision_threshold, "mlflow_run_id": candidate.run_id},
    )
    write_json(settings.path(TRAIN_METRICS), {**candidate.metrics, "n_train": candidate.n_train, "n_eval": candidate.n_eval})
    print(f"trained: {candidate.metrics} (MLflow run {candidate.run_id})")


def _local_champion(settings, reference_score: float | None):
    """The DVC pipeline's model (``models/model``) as a champion, with the threshold saved beside it."""
    import mlflow

    from opsfabric.ml.champion import Champion

    model_dir = str(settings.path(MODEL_DIR))
    metadata = mlflow.models.Model.load(model_dir).metadata or {}
    return Champion(
        model=mlflow.sklearn.load_model(model_dir),
        version="dvc",
        reference_score=reference_score,
        decision_threshold=float(metadata["decision_threshold"]),
    )


def stage_evaluate(settings) -> None:
    import pandas as pd
    from sklearn.metrics import roc_curve

    from opsfabric.ml.contract import dataset_paths, load_contract
    from opsfabric.ml.dataset import read_table
    from opsfabric.ml.model import binary_labels, evaluate_model, positive_scores
    from opsfabric.ml.training import reference_training_sets

    contract = load_contract(settings)
    champion = _local_champion(settings, None)
    evaluation = reference_training_sets(settings, contract).evaluation
    threshold = champion.decision_threshold
    holdout = evaluate_model(champion.model, evaluation, contract.spec, threshold=threshold)
    fpr, tpr, _ = roc_curve(binary_labels(evaluation, contract.spec), positive_scores(champion.model, evaluation, contract.spec))
    roc = pd.DataFrame({"fpr": fpr, "tpr": tpr}).round(5)
    rows = [{"batch": "holdout", **holdout}]
    for name, path in dataset_paths(settings).items():
        if name != "reference":
            rows.append({"batch": name, **evaluate_model(champion.model, read_table(path), contract.spec, threshold=threshold)})
    settings.path(ROC_PLOT).parent.mkdir(parents=True, exist_ok=True)
    roc.to_csv(settings.path(ROC_PLOT), index=False)
    pd.DataFrame(rows).round(5).to_csv(settings.path(BATCH_PLOT), index=False)
    write_json(settings.path(EVALUATE_METRICS), {r["batch"]: {k: v for k, v in r.items() if k != "batch"} for r in rows})


def stage_monitor(settings) -> None:
    import shutil

    from opsfabric.ml.contract import dataset_paths, load_contract
    from opsfabric.ml.monitoring import monitor_batch

    contract = load_contract(settings)
    reference_score = json.loads(settings.path(TRAIN_METRICS).read_text())[settings.ml.gate.metric]
    champion = _local_champion(settings, reference_score)
    out_dir = settings.path(DRIFT_DIR)
    shutil.rmtree(out_dir, ignore_errors=True)
    verdicts = {}
    for name, path in dataset_paths(settings).items():
        if name == "reference":
            continue
        outcome = monitor_batch(settings, path, contract, out_dir, champion=champion)
        verdicts[name] = {
            "drift_share": outcome.report.drift_share,
            "n_drifted_features": len(outcome.report.drifted_features),
            "current_score": outcome.report.current_score,
            "retrain": outcome.decision.approved,
        }
        print(f"{name}: retrain={outcome.decision.approved}; {'; '.join(outcome.decision.reasons)}")
    write_json(settings.path(DRIFT_METRICS), verdicts)


STAGES = {
    "generate": stage_generate,
    "validate": stage_validate,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "monitor": stage_monitor,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsfabric.ml.stages", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    args = parser.parse_args(argv)
    configure_runtime_env()
    from opsfabric.errors import OpsFabricError
    from opsfabric.settings import load_settings
    from opsfabric.stage_outputs import check_dvc_dataset

    try:
        settings = load_settings()
        check_dvc_dataset(settings)  # under dvc repro: only the dataset dvc.yaml tracks
        STAGES[args.stage](settings)
    except OpsFabricError as exc:
        hint = f"\nhint: {exc.hint}" if exc.hint else ""
        print(f"stage {args.stage} failed: {exc}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
