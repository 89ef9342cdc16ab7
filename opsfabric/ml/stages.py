"""DVC stage entry points: ``python -m opsfabric.ml.stages <stage>``.

Each stage calls the same step functions as the Prefect flows (``opsfabric.ml.steps``) and writes
the outputs ``dvc.yaml`` declares. Output locations are the module constants below, named once
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
    from opsfabric.ml import steps

    steps.generate_dataset(settings, overwrite=True)


def stage_validate(settings) -> None:
    import shutil

    from opsfabric.ml import steps

    contract = steps.load_contract(settings)
    out_dir = settings.path(VALIDATION_DIR)
    shutil.rmtree(out_dir, ignore_errors=True)
    for path in steps.dataset_paths(settings).values():
        steps.validate_file(settings, path, contract, out_dir)  # raises (non-zero exit) on a broken file
    (out_dir / "schema.json").write_text(json.dumps(contract.to_dict(), indent=2, default=str) + "\n")


def stage_train(settings) -> None:
    import shutil
    import tempfile

    import mlflow

    from opsfabric import tracking
    from opsfabric.ml import steps

    contract = steps.load_contract(settings)
    train, evaluation = steps.reference_training_sets(settings, contract)
    lineage = steps.lineage_for(settings, data_files=[settings.path(settings.dataset.reference)])
    with tempfile.TemporaryDirectory() as work:
        candidate = steps.train_and_log(
            settings, train, evaluation, contract, lineage=lineage, run_name="dvc-train", work_dir=Path(work), extra_tags=DVC_EXPERIMENT_TAG
        )
    model = tracking.load_sklearn_model(settings, candidate.model_uri)
    model_dir = settings.path(MODEL_DIR)
    shutil.rmtree(model_dir, ignore_errors=True)
    mlflow.sklearn.save_model(
        model, str(model_dir), serialization_format="cloudpickle", pip_requirements=tracking.model_requirements()
    )
    write_json(settings.path(TRAIN_METRICS), {**candidate.metrics, "n_train": candidate.n_train, "n_eval": candidate.n_eval})
    print(f"trained: {candidate.metrics} (MLflow run {candidate.run_id})")


def stage_evaluate(settings) -> None:
    import mlflow
    import pandas as pd
    from sklearn.metrics import roc_curve

    from opsfabric.ml import steps
    from opsfabric.ml.dataset import read_table
    from opsfabric.ml.training import binary_labels, evaluate_model, positive_scores

    contract = steps.load_contract(settings)
    model = mlflow.sklearn.load_model(str(settings.path(MODEL_DIR)))
    _, evaluation = steps.reference_training_sets(settings, contract)
    holdout = evaluate_model(model, evaluation, contract.spec)
    fpr, tpr, _ = roc_curve(binary_labels(evaluation, contract.spec), positive_scores(model, evaluation, contract.spec))
    roc = pd.DataFrame({"fpr": fpr, "tpr": tpr}).round(5)
    rows = [{"batch": "holdout", **holdout}]
    for name, path in steps.dataset_paths(settings).items():
        if name != "reference":
            rows.append({"batch": name, **evaluate_model(model, read_table(path), contract.spec)})
    settings.path(ROC_PLOT).parent.mkdir(parents=True, exist_ok=True)
    roc.to_csv(settings.path(ROC_PLOT), index=False)
    pd.DataFrame(rows).round(5).to_csv(settings.path(BATCH_PLOT), index=False)
    write_json(settings.path(EVALUATE_METRICS), {r["batch"]: {k: v for k, v in r.items() if k != "batch"} for r in rows})


def stage_monitor(settings) -> None:
    import shutil

    import mlflow

    from opsfabric.ml import steps

    contract = steps.load_contract(settings)
    model = mlflow.sklearn.load_model(str(settings.path(MODEL_DIR)))
    reference_score = json.loads(settings.path(TRAIN_METRICS).read_text())[settings.ml.gate.metric]
    out_dir = settings.path(DRIFT_DIR)
    shutil.rmtree(out_dir, ignore_errors=True)
    verdicts = {}
    for name, path in steps.dataset_paths(settings).items():
        if name == "reference":
            continue
        outcome = steps.monitor_batch(
            settings, path, contract, out_dir, model=model, champion_version="dvc", champion_reference_score=reference_score
        )
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
    from opsfabric.ml.errors import MLPipelineError
    from opsfabric.settings import load_settings

    settings = load_settings()
    try:
        STAGES[args.stage](settings)
    except MLPipelineError as exc:
        print(f"stage {args.stage} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
