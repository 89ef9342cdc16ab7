"""MLflow behind a few calls: the store, experiments, lineage tags, model logging and loading.

The embedded default is a SQLite store under the state folder; a server is one setting away
(``tracking.uri``). Code in threads (Prefect tasks) uses :class:`mlflow.MlflowClient` with explicit
run ids; the fluent API is only used inside one function, in one thread, where MLflow requires it
(``log_model``).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from opsfabric.locking import process_alive, process_start_ticks
from opsfabric.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)
_URI_LOCK = threading.Lock()
_READY_STORES: set[str] = set()
# Tags that say which process owns a RUNNING run, so a later run can tell a crashed one from a live one.
OWNER_TAGS = ("opsfabric.owner.host", "opsfabric.owner.pid", "opsfabric.owner.started")


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
        # Prefect builds the URL from PREFECT_UI_URL, which is unset under the ephemeral API: "None/flow-runs/...".
        if self.flow_run_url and not self.flow_run_url.startswith("None/"):
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
    """A client bound to the configured tracking and registry URIs (the store created first)."""
    from mlflow import MlflowClient

    use_tracking(settings)
    ensure_store(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def ensure_store(settings: Settings) -> None:
    """Create or upgrade an embedded SQLite store once, under the registry lock, before anything uses it.

    Two processes opening a fresh SQLite store at once both run MLflow's schema migration and one
    fails (``duplicate column name``). A server store is the server's business.
    """
    uri = settings.tracking_uri
    if uri in _READY_STORES:
        return
    if uri.startswith(("http://", "https://")):
        from opsfabric.preflight import check_mlflow

        check_mlflow(settings)  # a named error with the URL and the retry policy, before anything is written
        _READY_STORES.add(uri)
        return
    if not uri.startswith("sqlite:"):
        return
    from mlflow import MlflowClient

    from opsfabric.locking import exclusive

    with exclusive(settings, "mlflow-store", purpose=f"create or upgrade the MLflow store {uri}"):
        client = MlflowClient(tracking_uri=uri, registry_uri=settings.registry_uri)
        client.search_experiments(max_results=1)  # opens the store: creates tables, runs migrations
        if settings.registry_uri != uri and settings.registry_uri.startswith("sqlite:"):
            client.search_registered_models(max_results=1)
    _READY_STORES.add(uri)


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
    """Create a run with lineage and owner tags and return its id (the caller logs to it by id).

    Prefer :func:`mlflow_run`, which also ends the run as FINISHED or FAILED.
    """
    client = mlflow_client(settings)
    exp_id = experiment_id(settings, experiment)
    reconcile_abandoned_runs(settings, exp_id)
    run_tags = {**prefect_run_tags(), **lineage.as_tags(), **_owner_tags(), **(tags or {})}
    run = client.create_run(exp_id, run_name=run_name, tags=run_tags)
    return run.info.run_id


def prefect_run_tags() -> dict[str, str]:
    """The calling Prefect flow run (id, name, flow, deployment) as MLflow tags; empty outside a flow run.

    Lineage must outlive Prefect's event retention (7 days), so the ids travel with the run. Read
    from the run context only: no API call, and no Prefect import in a process that never loaded it
    (a DVC stage). The deployment id is the deployed root flow run's, inherited by its subflows.
    """
    if "prefect" not in sys.modules:
        return {}
    from prefect import context as prefect_context

    context = prefect_context.FlowRunContext.get()
    if context is None or context.flow_run is None:
        return {}
    run = context.flow_run
    tags = {"prefect.flow_run_id": str(run.id), "prefect.flow_run_name": run.name}
    if context.flow is not None:
        tags["prefect.flow_name"] = context.flow.name
    # A subflow has no deployment of its own; the deployed root run's id is in this context variable
    # (what prefect.runtime.deployment reads first; private, hence the getattr).
    inherited = getattr(prefect_context, "_deployment_id", None)
    deployment_id = run.deployment_id or (inherited.get() if inherited is not None else None)
    if deployment_id:
        tags["prefect.deployment_id"] = str(deployment_id)
    return tags


@dataclass(frozen=True)
class TrackedRun:
    """An open MLflow run: log to it through ``client`` with ``run_id`` (thread-safe, unlike the fluent API)."""

    run_id: str
    client: Any


@contextmanager
def mlflow_run(
    settings: Settings, experiment: str, run_name: str, lineage: Lineage, tags: dict[str, str] | None = None
) -> Iterator[TrackedRun]:
    """The one owner of an MLflow run's start, failure and end.

    The run ends FINISHED when the block completes and FAILED when it raises (the error propagates),
    so a broken step never looks like a finished one. A process killed inside the block leaves the
    run RUNNING; the next run in the experiment marks it KILLED (:func:`reconcile_abandoned_runs`).
    """
    run_id = start_run(settings, experiment, run_name, lineage, tags)
    client = mlflow_client(settings)
    try:
        yield TrackedRun(run_id, client)
    except BaseException:
        try:
            client.set_terminated(run_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001 - the step's own error is the one to raise
            log.error("could not mark MLflow run %s FAILED (%s); the next run in its experiment reconciles it", run_id, exc)
        raise
    client.set_terminated(run_id, status="FINISHED")


def log_dataset(
    tracked: TrackedRun, frame: Any, *, name: str, source: str | Path, md5: str | None = None, context: str = "training"
) -> None:
    """Record a dataset as an input of the run, the MLflow way (``log_inputs`` with a digest).

    The source is the file path (MLflow cannot resolve ``dvc://`` sources); the DVC md5 of the
    file is kept as a tag of the input, so ``dvc`` and MLflow name the same bytes.
    """
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    dataset = mlflow.data.from_pandas(frame, source=str(source), name=name)
    tags = [InputTag(key="mlflow.data.context", value=context)]
    if md5:
        tags.append(InputTag(key="dvc.md5", value=md5))
    tracked.client.log_inputs(tracked.run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)])


def _owner_tags() -> dict[str, str]:
    return dict(zip(OWNER_TAGS, (socket.gethostname(), str(os.getpid()), str(process_start_ticks(os.getpid())))))


def _owner_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process that created a run still runs: True/False on this host, None elsewhere or untagged."""
    host, pid, started = (tags.get(t) for t in OWNER_TAGS)
    return process_alive(host, pid, int(started) if started and started.isdigit() else None)


def reconcile_abandoned_runs(settings: Settings, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``experiment_id`` whose process on this host is gone.

    A run whose owner is on another host is left alone (its liveness cannot be checked from here).

    Returns:
        The ids of the runs marked KILLED.
    """
    client = mlflow_client(settings)
    killed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200):
        if _owner_alive(run.data.tags) is False:
            client.set_terminated(run.info.run_id, status="KILLED")
            client.set_tag(run.info.run_id, "opsfabric.reconciled", "owner process died while the run was RUNNING")
            log.warning("MLflow run %s (%s) was left RUNNING by a process that died: marked KILLED", run.info.run_id, run.info.run_name)
            killed.append(run.info.run_id)
    return killed


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
    # start_run(run_id=...) ends the run FINISHED on exit: reopen it, so the caller's mlflow_run
    # still ends it FAILED if a later step fails, and a kill leaves it RUNNING (then reconciled).
    mlflow_client(settings).update_run(run_id, status="RUNNING")
    return info.model_uri


def model_requirements() -> list[str]:
    """Pinned requirements for serving a scikit-learn model (what ``mlflow models serve`` installs)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "pandas", "numpy", "scipy", "cloudpickle")]


def load_sklearn_model(settings: Settings, model_uri: str) -> Any:
    """Load a scikit-learn model from any MLflow URI (``models:/name@alias``, ``runs:/``, ``models:/m-``)."""
    import mlflow

    use_tracking(settings)
    return mlflow.sklearn.load_model(model_uri)

