"""MLflow behind a few calls: the store, experiments, lineage tags, model logging and loading.

The embedded default is a SQLite store under the state folder; a server is one setting away
(``tracking.uri``). Code in threads (Prefect tasks) uses :class:`mlflow.MlflowClient` with explicit
run ids; the fluent API is only used inside one function, in one thread, where MLflow requires it
(``log_model``).
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsfabric.settings import PROJECT_ROOT, Settings

_URI_LOCK = threading.Lock()


@dataclass(frozen=True)
class Lineage:
    """Where a run came from: tagged on every MLflow run and registered model version."""

    git_commit: str = "unknown"
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    data_md5: dict[str, str] = field(default_factory=dict)
    config_hash: str | None = None

    def as_tags(self) -> dict[str, str]:
        tags = {"opsfabric.git_commit": self.git_commit}
        if self.flow_run_id:
            tags["prefect.flow_run_id"] = self.flow_run_id
        if self.flow_run_url:
            tags["prefect.flow_run_url"] = self.flow_run_url
        if self.config_hash:
            tags["opsfabric.config_hash"] = self.config_hash
        for name, md5 in self.data_md5.items():
            tags[f"dvc.md5.{name}"] = md5
        return tags


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The checked-out commit, with ``-dirty`` when the work tree has changes; ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def use_tracking(settings: Settings) -> None:
    """Point MLflow (fluent API, model loading) at the configured store. Creates local folders."""
    import mlflow

    if settings.tracking.uri is None:
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    with _URI_LOCK:
        os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
        os.environ["MLFLOW_REGISTRY_URI"] = settings.registry_uri
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.registry_uri)


def mlflow_client(settings: Settings):
    """A client bound to the configured tracking and registry URIs."""
    from mlflow import MlflowClient

    use_tracking(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def experiment_id(settings: Settings, name: str) -> str:
    """Id of experiment ``<prefix>-<name>``, created with the configured artifact location if new."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    full_name = f"{settings.tracking.experiment_prefix}-{name}"
    existing = client.get_experiment_by_name(full_name)
    if existing is not None:
        return existing.experiment_id
    try:
        return client.create_experiment(full_name, artifact_location=f"{settings.artifact_location}/{full_name}")
    except MlflowException:
        # Another process created it between the lookup and the create.
        found = client.get_experiment_by_name(full_name)
        if found is None:
            raise
        return found.experiment_id


def start_run(settings: Settings, experiment: str, run_name: str, lineage: Lineage, tags: dict[str, str] | None = None) -> str:
    """Create a run with lineage tags and return its id (the caller logs to it by id)."""
    client = mlflow_client(settings)
    run = client.create_run(
        experiment_id(settings, experiment),
        run_name=run_name,
        tags={**lineage.as_tags(), **(tags or {})},
    )
    return run.info.run_id


def log_sklearn_model(
    settings: Settings, run_id: str, model: Any, input_example: Any, *, name: str = "model"
) -> str:
    """Log a scikit-learn model with signature and input example to ``run_id``; return its model URI.

    MLflow's ``log_model`` is fluent-only; the run is resumed in this thread and closed again
    without changing its status.
    """
    import mlflow
    from mlflow.models import infer_signature

    use_tracking(settings)
    signature = infer_signature(input_example, model.predict_proba(input_example))
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.sklearn.log_model(
            model,
            name=name,
            signature=signature,
            input_example=input_example,
            pyfunc_predict_fn="predict_proba",
            serialization_format="cloudpickle",
            # Explicit requirements: MLflow's inference imports the model in a subprocess (~10 s).
            pip_requirements=model_requirements(),
        )
    # start_run(run_id=...) ends the run as FINISHED on exit; callers set the final status.
    return info.model_uri


def model_requirements() -> list[str]:
    """Pinned requirements for serving a scikit-learn model (what ``mlflow models serve`` installs)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "pandas", "numpy", "scipy", "cloudpickle")]


def end_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    mlflow_client(settings).set_terminated(run_id, status=status)


def load_sklearn_model(settings: Settings, model_uri: str) -> Any:
    """Load a scikit-learn model from any MLflow URI (``models:/name@alias``, ``runs:/``, ``models:/m-``)."""
    import mlflow

    use_tracking(settings)
    return mlflow.sklearn.load_model(model_uri)


def log_dict_artifact(settings: Settings, run_id: str, data: dict, artifact_file: str) -> None:
    mlflow_client(settings).log_dict(run_id, data, artifact_file)
