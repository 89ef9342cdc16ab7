"""Training a candidate: the data sets it learns and is judged on, the fit, and its MLflow run.

Nothing is registered here: a candidate becomes a model version only through the gate
(:mod:`opsfabric.ml.promotion`).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from opsfabric import tracking
from opsfabric.ml.contract import DatasetContract
from opsfabric.ml.dataset import FeatureSpec, file_md5, read_table
from opsfabric.ml.model import SAMPLE_WEIGHT_COLUMN, features_of, train_candidate
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage

TRAINING_EXPERIMENT = "ml-training"
EVAL_DIGEST_TAG = "opsfabric.eval_digest"  # on the candidate's run: the content digest of its eval set


# ---------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSlice:
    """Consecutive rows of a training or evaluation set that come from one file.

    Logged as an MLflow dataset input (digest of exactly these rows), with the DVC md5 of the file.
    """

    name: str
    source: str
    md5: str
    split: str  # "train" or "evaluation"
    start: int
    stop: int


@dataclass
class TrainingSets:
    """What a candidate is fitted on and what candidate and champion are judged on, with provenance."""

    train: pd.DataFrame
    evaluation: pd.DataFrame
    slices: list[DataSlice]

    def slice_frames(self) -> Iterator[tuple[DataSlice, pd.DataFrame]]:
        """Each slice with its rows (the sample-weight column left out: it is not data)."""
        for part in self.slices:
            frame = self.train if part.split == "train" else self.evaluation
            yield part, frame.iloc[part.start : part.stop].drop(columns=[SAMPLE_WEIGHT_COLUMN], errors="ignore")


def split_train_eval(
    frame: pd.DataFrame, spec: FeatureSpec, *, test_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified, seeded train/eval split."""
    from sklearn.model_selection import train_test_split

    labels = frame[spec.target]
    stratify = labels if labels.value_counts().min() >= 2 else None
    train, evaluation = train_test_split(frame, test_size=test_size, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), evaluation.reset_index(drop=True)


def recency_weights(n_reference: int, n_recent: int, recent_share: float) -> tuple[float, float]:
    """Per-row weights so recent rows carry ``recent_share`` of the total weight (mean weight 1)."""
    total = n_reference + n_recent
    return (1 - recent_share) * total / n_reference, recent_share * total / n_recent


def reference_training_sets(settings: Settings, contract: DatasetContract) -> TrainingSets:
    """Train/eval split of the reference batch."""
    path = settings.path(settings.dataset.reference)
    train, evaluation = split_train_eval(read_table(path), contract.spec, test_size=settings.ml.train.test_size, seed=settings.ml.train.seed)
    md5 = file_md5(path)
    return TrainingSets(
        train,
        evaluation,
        [
            DataSlice(path.stem, str(path), md5, "train", 0, len(train)),
            DataSlice(path.stem, str(path), md5, "evaluation", 0, len(evaluation)),
        ],
    )


def retraining_sets(settings: Settings, contract: DatasetContract, recent_paths: list[Path]) -> TrainingSets:
    """Reference + recent data for training; a held-out part of the recent data for evaluation.

    Evaluating on recent data only asks the question that matters after drift: which model is
    better on the data we see now. Champion and candidate are both scored on it. Recent rows carry
    ``retrain.recent_weight_share`` of the sample weight, so a few thousand new rows are not
    outvoted by a reference batch that describes the old behaviour.
    """
    reference_path = settings.path(settings.dataset.reference)
    reference = read_table(reference_path)
    recent_parts = [read_table(p) for p in recent_paths]
    # Each recent file is split on its own, so every row of both sets comes from one named file.
    splits = [
        split_train_eval(part, contract.spec, test_size=settings.ml.retrain.recent_eval_share, seed=settings.ml.train.seed)
        for part in recent_parts
    ]
    n_recent_train = sum(len(t) for t, _ in splits)
    reference_weight, recent_weight = recency_weights(len(reference), n_recent_train, settings.ml.retrain.recent_weight_share)
    slices = [DataSlice(reference_path.stem, str(reference_path), file_md5(reference_path), "train", 0, len(reference))]
    train_at, eval_at = len(reference), 0
    for path, (part_train, part_eval) in zip(recent_paths, splits):
        md5 = file_md5(path)
        slices.append(DataSlice(Path(path).stem, str(path), md5, "train", train_at, train_at + len(part_train)))
        slices.append(DataSlice(Path(path).stem, str(path), md5, "evaluation", eval_at, eval_at + len(part_eval)))
        train_at += len(part_train)
        eval_at += len(part_eval)
    train = pd.concat(
        [reference.assign(**{SAMPLE_WEIGHT_COLUMN: reference_weight})]
        + [part_train.assign(**{SAMPLE_WEIGHT_COLUMN: recent_weight}) for part_train, _ in splits],
        ignore_index=True,
    )
    evaluation = pd.concat([part_eval for _, part_eval in splits], ignore_index=True)
    return TrainingSets(train, evaluation, slices)


# ---------------------------------------------------------------------------------------------
# The candidate and its MLflow run
# ---------------------------------------------------------------------------------------------
def evaluation_digest(frame: pd.DataFrame) -> str:
    """A content digest of a table: column names, then every row's values, in order.

    Two frames have the same digest only if they hold the same rows in the same order (the index
    is ignored), so the gate can tell "the same eval set" from "another one of the same length".
    """
    digest = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass
class CandidateRun:
    """A trained candidate logged to MLflow. Its eval data travel with it as data, not as a path.

    Attributes:
        eval_digest: :func:`evaluation_digest` of the rows ``metrics`` were computed on; the gate
            scores the champion only on data with this digest.
    """

    run_id: str
    model_uri: str
    metrics: dict[str, float]
    decision_threshold: float
    n_train: int
    n_eval: int
    eval_digest: str


def train_and_log(
    settings: Settings,
    sets: TrainingSets,
    contract: DatasetContract,
    *,
    lineage: Lineage,
    run_name: str,
    extra_tags: dict[str, str] | None = None,
) -> CandidateRun:
    """Fit a candidate and log params, metrics, data sets, eval set and model (signature, example) to MLflow.

    The run ends FINISHED when everything is logged and FAILED if anything raises
    (``tracking.mlflow_run``; ``tracking.log_sklearn_model`` leaves the run RUNNING for it to end).
    """
    from mlflow.entities import Metric, Param, RunTag

    params = settings.ml.train
    with tracking.mlflow_run(
        settings, TRAINING_EXPERIMENT, run_name, lineage, tags={"opsfabric.dataset": settings.dataset.name, **(extra_tags or {})}
    ) as run:
        trained = train_candidate(
            sets.train, sets.evaluation, contract.spec, params.model, seed=params.seed, threshold=params.decision_threshold
        )
        now = int(time.time() * 1000)
        eval_digest = evaluation_digest(sets.evaluation)
        logged_params = {**trained.params, "test_size": params.test_size, "n_train": trained.n_train, "n_eval": trained.n_eval}
        run.client.log_batch(
            run.run_id,
            metrics=[Metric(f"eval_{k}", v, now, 0) for k, v in trained.metrics.items()],
            params=[Param(k, str(v)) for k, v in logged_params.items()],
            tags=[RunTag(EVAL_DIGEST_TAG, eval_digest)],
        )
        for part, frame in sets.slice_frames():
            tracking.log_dataset(run, frame, name=f"{part.name}-{part.split}", source=part.source, md5=part.md5, context=part.split)
        with tempfile.TemporaryDirectory() as tmp:
            # The eval set itself (MLflow dataset inputs keep only digest and schema), to re-judge later.
            eval_file = Path(tmp) / "eval_set.parquet"
            sets.evaluation.to_parquet(eval_file, index=False)
            run.client.log_artifact(run.run_id, str(eval_file), "data")
        run.client.log_dict(run.run_id, contract.to_dict(), "data/contract.json")
        model_uri = tracking.log_sklearn_model(settings, run.run_id, trained.pipeline, features_of(sets.evaluation.head(5), contract.spec))
    return CandidateRun(
        run_id=run.run_id,
        model_uri=model_uri,
        metrics=trained.metrics,
        decision_threshold=params.decision_threshold,
        n_train=trained.n_train,
        n_eval=trained.n_eval,
        eval_digest=eval_digest,
    )
