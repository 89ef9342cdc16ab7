"""The ML pipeline's steps, each one unit of work with its I/O at the edges.

Prefect tasks (``tasks/``) and DVC stages (``opsfabric.ml.stages``) both call these functions:
there is one implementation of every step. Nothing here imports Prefect.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from opsfabric import tracking
from opsfabric.ml import datagen
from opsfabric.ml.dataset import FeatureSpec, file_md5, read_table, resolve_feature_spec
from opsfabric.ml.drift import DriftReport, compute_drift, write_drift_report
from opsfabric.ml.gate import Decision, GateDecision, should_promote, should_retrain
from opsfabric.ml.registry import RegistrationResult, get_champion, register_candidate
from opsfabric.ml.scoring import score_frame
from opsfabric.ml.training import (
    SAMPLE_WEIGHT_COLUMN,
    evaluate_model,
    features_of,
    recency_weights,
    split_train_eval,
    train_candidate,
)
from opsfabric.ml.validation import (
    TableSchema,
    ValidationReport,
    build_schema,
    raise_for_failures,
    validate_table,
    write_report,
)
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage

log = logging.getLogger(__name__)

TRAINING_EXPERIMENT = "ml-training"
MONITORING_EXPERIMENT = "ml-monitoring"


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def dataset_paths(settings: Settings) -> dict[str, Path]:
    """Reference and batch files, by batch name (file stem), in time order."""
    paths = {"reference": settings.path(settings.dataset.reference)}
    for batch in settings.dataset.batches:
        path = settings.path(batch)
        paths[path.stem] = path
    return paths


def generate_dataset(settings: Settings, *, overwrite: bool = False) -> dict[str, Path]:
    """Write the configured dataset's files with its generator (skipped when they exist).

    Returns:
        Batch name to path for every configured file.

    Raises:
        FileNotFoundError: the generator is ``none`` and a configured file does not exist.
    """
    paths = dataset_paths(settings)
    if not overwrite and all(p.exists() for p in paths.values()):
        return paths
    out_dir = paths["reference"].parent
    params = settings.ml.generate
    if settings.dataset.generator == "churn":
        datagen.generate_churn_batches(
            out_dir,
            seed=params.seed,
            reference_rows=params.reference_rows,
            batch_rows=params.batch_rows,
            start_date=params.start_date,
        )
    elif settings.dataset.generator == "sklearn_breast_cancer":
        datagen.export_breast_cancer(out_dir, seed=params.seed)
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"dataset {settings.dataset.name!r}: configured files not found: {missing}")
    return paths


def config_hash(settings: Settings) -> str:
    """Short hash of the dataset definition and ML parameters (not of machine-specific paths)."""
    payload = json.dumps(
        {"dataset": settings.dataset.model_dump(mode="json"), "ml": settings.ml.model_dump(mode="json")}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class DatasetContract:
    """Feature roles and schema, learned once from the reference batch and shared by every step."""

    spec: FeatureSpec
    schema: TableSchema
    reference_md5: str

    def to_dict(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "schema": self.schema.to_dict(), "reference_md5": self.reference_md5}


def load_contract(settings: Settings) -> DatasetContract:
    """Read the reference batch and derive feature roles and validation schema from it."""
    reference_path = settings.path(settings.dataset.reference)
    reference = read_table(reference_path)
    spec = resolve_feature_spec(settings.dataset, reference)
    missing = [c for c in [spec.target, *spec.features] if c not in reference.columns]
    if missing:
        from opsfabric.ml.errors import DataValidationError

        raise DataValidationError(
            f"{reference_path}: configured columns {missing} are missing from the reference batch "
            f"(columns present: {list(reference.columns)})"
        )
    return DatasetContract(spec=spec, schema=build_schema(reference, spec, settings.dataset), reference_md5=file_md5(reference_path))


def validate_file(
    settings: Settings, path: Path, contract: DatasetContract, report_dir: Path, *, require_label: bool | None = None
) -> ValidationReport:
    """Validate one file, write its JSON report to ``report_dir``, raise if any rule failed.

    Raises:
        DataLoadError: the file cannot be read (the message names it).
        DataValidationError: a rule failed (the message names column, rule and rows).
    """
    frame = read_table(path)
    report = validate_table(frame, contract.schema, settings.ml.validation, source=str(path), require_label=require_label)
    write_report(report, report_dir / f"{Path(path).stem}.json")
    raise_for_failures(report)
    return report


# ---------------------------------------------------------------------------------------------
# Training and the gate
# ---------------------------------------------------------------------------------------------
@dataclass
class CandidateRun:
    """A trained candidate logged to MLflow, with the eval data it must be judged on."""

    run_id: str
    model_uri: str
    metrics: dict[str, float]
    eval_path: str
    n_train: int
    n_eval: int


def train_and_log(
    settings: Settings,
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    contract: DatasetContract,
    *,
    lineage: Lineage,
    run_name: str,
    work_dir: Path,
    extra_tags: dict[str, str] | None = None,
) -> CandidateRun:
    """Fit a candidate and log params, metrics, eval set and model (signature, example) to MLflow.

    The MLflow run is marked FAILED if anything goes wrong after it was created, so a broken
    training never looks like a finished one; nothing is registered here.
    """
    params = settings.ml.train
    run_id = tracking.start_run(
        settings,
        TRAINING_EXPERIMENT,
        run_name,
        lineage,
        tags={"opsfabric.dataset": settings.dataset.name, **(extra_tags or {})},
    )
    client = tracking.mlflow_client(settings)
    try:
        trained = train_candidate(train, evaluation, contract.spec, params.model, seed=params.seed)
        for key, value in {**trained.params, "test_size": params.test_size, "n_train": trained.n_train, "n_eval": trained.n_eval}.items():
            client.log_param(run_id, key, value)
        for key, value in trained.metrics.items():
            client.log_metric(run_id, f"eval_{key}", value)
        work_dir.mkdir(parents=True, exist_ok=True)
        eval_path = work_dir / "eval_set.parquet"
        evaluation.to_parquet(eval_path, index=False)
        client.log_artifact(run_id, str(eval_path), "data")
        client.log_dict(run_id, contract.to_dict(), "data/contract.json")
        model_uri = tracking.log_sklearn_model(settings, run_id, trained.pipeline, features_of(evaluation.head(5), contract.spec))
    except BaseException:
        tracking.end_run(settings, run_id, "FAILED")
        raise
    tracking.end_run(settings, run_id, "FINISHED")
    return CandidateRun(
        run_id=run_id,
        model_uri=model_uri,
        metrics=trained.metrics,
        eval_path=str(eval_path),
        n_train=trained.n_train,
        n_eval=trained.n_eval,
    )


def reference_training_sets(settings: Settings, contract: DatasetContract) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/eval split of the reference batch."""
    reference = read_table(settings.path(settings.dataset.reference))
    return split_train_eval(reference, contract.spec, test_size=settings.ml.train.test_size, seed=settings.ml.train.seed)


def retraining_sets(
    settings: Settings, contract: DatasetContract, recent_paths: list[Path]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference + recent data for training; a held-out part of the recent data for evaluation.

    Evaluating on recent data only asks the question that matters after drift: which model is
    better on the data we see now. Champion and candidate are both scored on it. Recent rows carry
    ``retrain.recent_weight_share`` of the sample weight, so a few thousand new rows are not
    outvoted by a reference batch that describes the old behaviour.
    """
    reference = read_table(settings.path(settings.dataset.reference))
    recent = pd.concat([read_table(p) for p in recent_paths], ignore_index=True)
    recent_train, recent_eval = split_train_eval(
        recent, contract.spec, test_size=settings.ml.retrain.recent_eval_share, seed=settings.ml.train.seed
    )
    reference_weight, recent_weight = recency_weights(
        len(reference), len(recent_train), settings.ml.retrain.recent_weight_share
    )
    train = pd.concat(
        [reference.assign(**{SAMPLE_WEIGHT_COLUMN: reference_weight}), recent_train.assign(**{SAMPLE_WEIGHT_COLUMN: recent_weight})],
        ignore_index=True,
    )
    return train, recent_eval


@dataclass
class GateOutcome:
    decision: GateDecision
    registration: RegistrationResult | None

    def summary(self) -> dict[str, Any]:
        reg = self.registration
        return {
            "promoted": self.decision.approved,
            "reasons": self.decision.reasons,
            "metric": self.decision.metric,
            "candidate_score": self.decision.candidate_score,
            "champion_score": self.decision.champion_score,
            "version": reg.version.version if reg else None,
            "previous_champion": reg.previous_champion if reg else None,
        }


def champion_score_on(settings: Settings, evaluation: pd.DataFrame, contract: DatasetContract) -> tuple[str | None, float | None]:
    """Score the current champion on ``evaluation`` (None, None when there is no champion)."""
    client = tracking.mlflow_client(settings)
    champion = get_champion(client, settings.ml.registered_model, settings.ml.champion_alias)
    if champion is None:
        return None, None
    model = tracking.load_sklearn_model(settings, champion.uri)
    return champion.version, evaluate_model(model, evaluation, contract.spec)[settings.ml.gate.metric]


def gate_and_register(
    settings: Settings, candidate: CandidateRun, contract: DatasetContract, *, lineage: Lineage
) -> GateOutcome:
    """Compare candidate and champion on the candidate's eval data, register, move the alias if better.

    The decision and both scores are logged to the candidate's MLflow run and tagged on the version.
    """
    evaluation = pd.read_parquet(candidate.eval_path)
    metric = settings.ml.gate.metric
    champion_version, champion_score = champion_score_on(settings, evaluation, contract)
    decision = should_promote(candidate.metrics[metric], champion_score, settings.ml.gate)
    client = tracking.mlflow_client(settings)
    client.log_metric(candidate.run_id, "gate_candidate_score", decision.candidate_score)
    if champion_score is not None:
        client.log_metric(candidate.run_id, "gate_champion_score", champion_score)
    client.set_tag(candidate.run_id, "gate.decision", "promoted" if decision.approved else "rejected")
    client.set_tag(candidate.run_id, "gate.champion_version", champion_version or "none")
    client.log_dict(candidate.run_id, decision.to_dict() | {"champion_version": champion_version}, "gate/decision.json")
    registration = register_candidate(
        client,
        name=settings.ml.registered_model,
        alias=settings.ml.champion_alias,
        model_uri=candidate.model_uri,
        run_id=candidate.run_id,
        decision=decision,
        tags={**lineage.as_tags(), f"eval_{metric}": f"{candidate.metrics[metric]:.6f}"},
    )
    log.info("gate for run %s: %s", candidate.run_id, "; ".join(decision.reasons))
    return GateOutcome(decision=decision, registration=registration)


# ---------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------
@dataclass
class MonitorOutcome:
    batch: str
    champion_version: str
    report: DriftReport
    decision: Decision
    report_json: str
    mlflow_run_id: str | None = None
    scored_path: str | None = None
    notes: list[str] = field(default_factory=list)


def monitor_batch(
    settings: Settings,
    batch_path: Path,
    contract: DatasetContract,
    out_dir: Path,
    *,
    model: Any,
    champion_version: str,
    champion_reference_score: float | None,
    lineage: Lineage | None = None,
) -> MonitorOutcome:
    """Score a batch with the champion, run Evidently drift and performance checks, decide on retraining.

    Args:
        model: the champion model (loaded by the caller from the registry or a DVC output).
        champion_reference_score: the champion's gate metric on its own eval data, the baseline a
            performance drop is measured from (None: performance is not checked).
        lineage: when given, the report is logged to an MLflow run in the monitoring experiment.
    """
    batch = Path(batch_path).stem
    reference = read_table(settings.path(settings.dataset.reference))
    current = read_table(batch_path)
    scored_reference = score_frame(model, reference, contract.spec)
    scored_current = score_frame(model, current, contract.spec)
    metric = settings.ml.gate.metric
    has_labels = contract.spec.target in current.columns and current[contract.spec.target].notna().all()
    current_score = evaluate_model(model, current, contract.spec)[metric] if has_labels else None
    report = compute_drift(
        scored_reference,
        scored_current,
        contract.spec,
        batch=batch,
        metric=metric,
        reference_score=champion_reference_score if has_labels else None,
        current_score=current_score,
        sample=settings.ml.drift.sample_rows,
        html_path=out_dir / f"{batch}.html",
    )
    decision = should_retrain(report.summary(), settings.ml.drift)
    report_json = write_drift_report(report, out_dir / f"{batch}.json", decision=decision.to_dict())
    scored_path = out_dir / f"{batch}.scored.parquet"
    scored_current.to_parquet(scored_path, index=False)
    run_id = None
    if lineage is not None:
        run_id = _log_monitoring_run(settings, report, decision, batch_path, champion_version, lineage)
    return MonitorOutcome(
        batch=batch,
        champion_version=champion_version,
        report=report,
        decision=decision,
        report_json=str(report_json),
        mlflow_run_id=run_id,
        scored_path=str(scored_path),
    )


def _log_monitoring_run(
    settings: Settings, report: DriftReport, decision: Decision, batch_path: Path, champion_version: str, lineage: Lineage
) -> str:
    lineage = Lineage(**{**asdict(lineage), "data_md5": {**lineage.data_md5, Path(batch_path).stem: file_md5(batch_path)}})
    run_id = tracking.start_run(
        settings,
        MONITORING_EXPERIMENT,
        f"monitor-{report.batch}",
        lineage,
        tags={"opsfabric.batch": report.batch, "opsfabric.champion_version": champion_version, "drift.retrain": str(decision.approved)},
    )
    client = tracking.mlflow_client(settings)
    try:
        client.log_metric(run_id, "drift_share", report.drift_share)
        client.log_metric(run_id, "n_drifted_features", len(report.drifted_features))
        for feature in report.features:
            client.log_metric(run_id, f"drift_score.{feature.column}", feature.score)
        if report.current_score is not None:
            client.log_metric(run_id, f"current_{report.metric}", report.current_score)
        if report.reference_score is not None:
            client.log_metric(run_id, f"reference_{report.metric}", report.reference_score)
        if report.html_path:
            client.log_artifact(run_id, report.html_path, "evidently")
        client.log_dict(run_id, report.to_dict() | {"decision": decision.to_dict()}, "drift_report.json")
        client.log_text(run_id, report.to_markdown(decision.reasons, decision.approved), "drift_summary.md")
    except BaseException:
        tracking.end_run(settings, run_id, "FAILED")
        raise
    tracking.end_run(settings, run_id, "FINISHED")
    return run_id


def load_champion(settings: Settings) -> tuple[Any, str, float | None]:
    """The champion model, its version and its eval score (tag written at registration).

    Raises:
        LookupError: no champion is registered yet.
    """
    client = tracking.mlflow_client(settings)
    champion = get_champion(client, settings.ml.registered_model, settings.ml.champion_alias)
    if champion is None:
        raise LookupError(
            f"no version of {settings.ml.registered_model!r} has alias {settings.ml.champion_alias!r}: run the train flow first"
        )
    score_tag = champion.tags.get(f"eval_{settings.ml.gate.metric}")
    model = tracking.load_sklearn_model(settings, f"models:/{settings.ml.registered_model}@{settings.ml.champion_alias}")
    return model, champion.version, float(score_tag) if score_tag is not None else None


def score_batch_file(settings: Settings, model: Any, contract: DatasetContract, batch_path: Path, out_path: Path) -> Path:
    """Score every row of a batch file and write the result (input columns + predictions) as Parquet."""
    scored = score_frame(model, read_table(batch_path), contract.spec)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scored.to_parquet(out_path, index=False)
    return out_path


def lineage_for(settings: Settings, *, data_files: list[Path], flow_run_id: str | None = None, flow_run_url: str | None = None) -> Lineage:
    """Lineage tags: git commit, DVC (md5) hashes of the input files, config hash, Prefect flow run."""
    return Lineage(
        git_commit=tracking.git_commit(settings.project_root),
        flow_run_id=flow_run_id,
        flow_run_url=flow_run_url,
        data_md5={Path(p).stem: file_md5(p) for p in data_files},
        config_hash=config_hash(settings),
    )
