"""Plain records of what the platform wrote, and the one place that reads them (the edge).

MLflow runs and model versions, the index registry (``<state_dir>/rag/versions.json``) and
``dvc.lock`` at a git commit become frozen dataclasses here; :mod:`opsfabric.ops.lineage` and
:mod:`opsfabric.ops.report` work on those records only, so they are unit-tested on constructed ones.

Nothing here depends on Prefect's event history (pruned after 7 days): the Prefect flow run and
deployment come from MLflow tags (``prefect.flow_run_id``, ``prefect.deployment_id``, written by
``opsfabric.tracking``); asking the Prefect API about them is optional enrichment.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

# Tags written by opsfabric.tracking.Lineage / prefect_run_tags and the domain modules.
GIT_COMMIT_TAG = "opsfabric.git_commit"
FLOW_RUN_TAG = "prefect.flow_run_id"
FLOW_RUN_URL_TAG = "prefect.flow_run_url"
DEPLOYMENT_TAG = "prefect.deployment_id"
DVC_MD5_PREFIX = "dvc.md5."
# A Prefect flow run looked up by id: a dict (name, state, deployment...) or None when the API does not know it.
FlowRunLookup = Callable[[str], "dict[str, Any] | None"]


def _utc(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc) if ms else None


@dataclass(frozen=True)
class DatasetInput:
    """An MLflow dataset input of a run: the rows' digest, the file it came from and that file's DVC md5."""

    name: str
    digest: str
    source: str | None
    md5: str | None
    context: str | None


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run, as read."""

    run_id: str
    experiment_id: str
    experiment: str
    name: str
    status: str  # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    start_ms: int | None
    end_ms: int | None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    inputs: tuple[DatasetInput, ...] = ()

    @property
    def started(self) -> datetime | None:
        return _utc(self.start_ms)

    @property
    def ended(self) -> datetime | None:
        return _utc(self.end_ms)

    @property
    def seconds(self) -> float | None:
        return (self.end_ms - self.start_ms) / 1000 if self.start_ms and self.end_ms else None

    @property
    def git_commit(self) -> str | None:
        return self.tags.get(GIT_COMMIT_TAG)

    @property
    def flow_run_id(self) -> str | None:
        return self.tags.get(FLOW_RUN_TAG) or None

    @property
    def deployment_id(self) -> str | None:
        return self.tags.get(DEPLOYMENT_TAG) or None

    @property
    def data_md5(self) -> dict[str, str]:
        """``dvc.md5.<name>`` tags: the hashes of the files the run read, by name."""
        return {k.removeprefix(DVC_MD5_PREFIX): v for k, v in self.tags.items() if k.startswith(DVC_MD5_PREFIX)}


@dataclass(frozen=True)
class VersionRecord:
    """One registered model version."""

    name: str
    version: str
    run_id: str | None
    source: str
    created_ms: int | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def created(self) -> datetime | None:
        return _utc(self.created_ms)

    @property
    def decision(self) -> str | None:
        return self.tags.get("gate.decision")


@dataclass(frozen=True)
class IndexRecord:
    """One index version from the registry (``opsfabric.rag.versions.IndexVersion``, as plain data)."""

    collection: str
    version: int
    status: str
    corpus_hash: str | None = None
    config_hash: str | None = None
    base_collection: str | None = None
    created_at: str | None = None
    built_at: str | None = None
    eval_scores: dict[str, float] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    eval_run_id: str | None = None
    index_config: dict[str, Any] = field(default_factory=dict)
    rolled_back_at: str | None = None


@dataclass(frozen=True)
class IndexRegistryRecord:
    """The index registry: every version, and the live history (the last entry is live)."""

    alias: str
    versions: tuple[IndexRecord, ...] = ()
    live_history: tuple[str, ...] = ()
    pending_move: dict[str, Any] | None = None

    @property
    def live(self) -> IndexRecord | None:
        return self.find(self.live_history[-1]) if self.live_history else None

    def find(self, collection: str) -> IndexRecord | None:
        return next((v for v in self.versions if v.collection == collection), None)


@dataclass(frozen=True)
class DvcFile:
    """A dep or out of a ``dvc.lock`` stage (``md5`` ends with ``.dir`` for a folder)."""

    path: str
    md5: str | None
    size: int | None = None
    nfiles: int | None = None


@dataclass(frozen=True)
class DvcStage:
    """One stage of ``dvc.lock``: command, deps, outs and the parameter values it ran with."""

    name: str
    cmd: str
    deps: tuple[DvcFile, ...] = ()
    outs: tuple[DvcFile, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cmd": self.cmd,
            "deps": [{"path": f.path, "md5": f.md5} for f in self.deps],
            "outs": [{"path": f.path, "md5": f.md5} for f in self.outs],
            "params": self.params,
        }


@dataclass(frozen=True)
class DvcLock:
    """``dvc.lock`` as it was at a commit (``where`` says which commit, or the work tree), or why it is missing."""

    where: str
    stages: dict[str, DvcStage] = field(default_factory=dict)
    missing: str | None = None  # why it could not be read


def parse_dvc_lock(text: str, where: str) -> DvcLock:
    """Parse ``dvc.lock`` (schema 2.0) into stages.

    Raises:
        ValueError: the text is not a ``dvc.lock`` (not YAML, or no ``stages`` mapping).
    """
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise ValueError(f"{where}: not a dvc.lock (no 'stages' mapping)")

    def files(entries: Iterable[dict] | None) -> tuple[DvcFile, ...]:
        return tuple(DvcFile(str(e["path"]), e.get("md5"), e.get("size"), e.get("nfiles")) for e in entries or [])

    stages = {
        name: DvcStage(name, str(body.get("cmd", "")), files(body.get("deps")), files(body.get("outs")), dict(body.get("params") or {}))
        for name, body in data["stages"].items()
    }
    return DvcLock(where, stages)


def clean_commit(commit: str | None) -> tuple[str | None, bool]:
    """``(sha, dirty)`` from a recorded commit (``<sha>-dirty`` when the work tree had changes); None if unknown."""
    if not commit or commit == "unknown":
        return None, False
    return commit.removesuffix("-dirty"), commit.endswith("-dirty")


def read_dvc_lock(root: Path, commit: str | None) -> DvcLock:
    """``dvc.lock`` at ``commit`` (``git show <commit>:dvc.lock``), or the work tree's when ``commit`` is None.

    A commit git does not know (another clone, a shallow checkout) or a repository without git
    gives a :class:`DvcLock` whose ``missing`` says why: lineage reports it, it does not fail.
    """
    if commit is None:
        path = root / "dvc.lock"
        if not path.exists():
            return DvcLock("work tree", missing=f"{path} does not exist")
        return _parsed(path.read_text(), f"work tree ({path})")
    try:
        shown = subprocess.run(
            ["git", "show", f"{commit}:dvc.lock"], cwd=root, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return DvcLock(f"commit {commit}", missing=f"git show {commit}:dvc.lock failed: {exc}")
    if shown.returncode != 0:
        return DvcLock(f"commit {commit}", missing=f"git show {commit}:dvc.lock: {shown.stderr.strip()[:300]}")
    return _parsed(shown.stdout, f"commit {commit}")


def _parsed(text: str, where: str) -> DvcLock:
    try:
        return parse_dvc_lock(text, where)
    except (ValueError, yaml.YAMLError) as exc:
        return DvcLock(where, missing=f"unreadable dvc.lock: {exc}")


def read_index_registry(path: Path, alias: str) -> IndexRegistryRecord:
    """The index registry JSON as records (an empty registry when the file does not exist yet)."""
    from dataclasses import asdict

    from opsfabric.rag.versions import VersionRegistry

    if not path.exists():
        return IndexRegistryRecord(alias)
    registry = VersionRegistry.read(path)  # a damaged file: the registry's named error and its repair hint
    known = set(IndexRecord.__dataclass_fields__)
    versions = tuple(IndexRecord(**{k: v for k, v in asdict(entry).items() if k in known}) for entry in registry.versions)
    return IndexRegistryRecord(alias, versions, tuple(registry.live_history), registry.pending_move)


# ---- links ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Links:
    """Where a person can click: the MLflow UI and the Prefect UI, when known (else ids are shown)."""

    mlflow_ui: str | None = None
    prefect_ui: str | None = None

    def run_url(self, run: RunRecord) -> str | None:
        if not self.mlflow_ui:
            return None
        return f"{self.mlflow_ui.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}"

    def model_url(self, name: str, version: str) -> str | None:
        return f"{self.mlflow_ui.rstrip('/')}/#/models/{name}/versions/{version}" if self.mlflow_ui else None

    def flow_run_url(self, flow_run_id: str | None, recorded: str | None = None) -> str | None:
        """The configured Prefect UI's page of the flow run, else the URL recorded at run time (if it is one)."""
        if not flow_run_id:
            return None
        if self.prefect_ui:
            return f"{self.prefect_ui.rstrip('/')}/runs/flow-run/{flow_run_id}"
        return recorded if recorded and recorded.startswith("http") else None


def mlflow_ui_from_tracking_uri(uri: str) -> str | None:
    """A tracking server's URI is also its UI; an embedded SQLite store has no UI until ``mlflow ui`` serves it."""
    return uri if uri.startswith(("http://", "https://")) else None


# ---- MLflow (the edge) ---------------------------------------------------------------------------
def run_record(run: Any, experiment_name: str) -> RunRecord:
    """A :class:`RunRecord` from an ``mlflow.entities.Run``."""
    inputs = []
    for item in getattr(run.inputs, "dataset_inputs", None) or []:
        tags = {t.key: t.value for t in item.tags}
        source = item.dataset.source
        try:
            source = json.loads(source).get("uri", source)
        except (ValueError, AttributeError):
            pass
        inputs.append(DatasetInput(item.dataset.name, item.dataset.digest, source, tags.get("dvc.md5"), tags.get("mlflow.data.context")))
    return RunRecord(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        experiment=experiment_name,
        name=run.info.run_name or "",
        status=run.info.status,
        start_ms=run.info.start_time,
        end_ms=run.info.end_time,
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        params=dict(run.data.params),
        inputs=tuple(inputs),
    )


def version_record(mv: Any) -> VersionRecord:
    return VersionRecord(
        mv.name, str(mv.version), mv.run_id, mv.source, mv.creation_timestamp, dict(mv.tags), tuple(getattr(mv, "aliases", []) or [])
    )


class MlflowRecords:
    """Read-only view of one MLflow store (tracking + registry) as records.

    Args:
        client: an ``MlflowClient``.
        prefix: the experiment prefix (``tracking.experiment_prefix``): only these experiments are searched.
    """

    def __init__(self, client: Any, prefix: str):
        self.client = client
        self.prefix = prefix
        self._experiments: dict[str, str] = {}

    def _is_not_found(self, exc: Exception) -> bool:
        from opsfabric.ml.registry import is_not_found

        return is_not_found(exc)

    def experiment_name(self, experiment_id: str) -> str:
        if experiment_id not in self._experiments:
            self._experiments[experiment_id] = self.client.get_experiment(experiment_id).name
        return self._experiments[experiment_id]

    def run(self, run_id: str) -> RunRecord | None:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if self._is_not_found(exc) or "INVALID_PARAMETER_VALUE" in str(getattr(exc, "error_code", "")):
                return None
            raise
        return run_record(run, self.experiment_name(run.info.experiment_id))

    def runs(self, experiment: str, max_results: int = 500) -> list[RunRecord]:
        """Runs of experiment ``<prefix>-<experiment>``, newest first (empty if it does not exist)."""
        found = self.client.get_experiment_by_name(f"{self.prefix}-{experiment}")
        if found is None:
            return []
        self._experiments[found.experiment_id] = found.name
        runs = self.client.search_runs([found.experiment_id], max_results=max_results, order_by=["attributes.start_time DESC"])
        return [run_record(r, found.name) for r in runs]

    def all_runs(self, max_results: int = 2000) -> list[RunRecord]:
        """Runs of every ``<prefix>-*`` experiment, newest first."""
        experiments = [e for e in self.client.search_experiments() if e.name.startswith(f"{self.prefix}-")]
        for e in experiments:
            self._experiments[e.experiment_id] = e.name
        if not experiments:
            return []
        runs = self.client.search_runs([e.experiment_id for e in experiments], max_results=max_results, order_by=["attributes.start_time DESC"])
        return [run_record(r, self.experiment_name(r.info.experiment_id)) for r in runs]

    def version(self, name: str, version: str) -> VersionRecord | None:
        from mlflow.exceptions import MlflowException

        try:
            return version_record(self.client.get_model_version(name, version))
        except MlflowException as exc:
            if self._is_not_found(exc):
                return None
            raise

    def alias(self, name: str, alias: str) -> VersionRecord | None:
        from mlflow.exceptions import MlflowException

        try:
            return version_record(self.client.get_model_version_by_alias(name, alias))
        except MlflowException as exc:
            if self._is_not_found(exc):
                return None
            raise

    def versions(self, name: str) -> list[VersionRecord]:
        """Every version of registered model ``name``, oldest first, with their aliases."""
        from mlflow.exceptions import MlflowException

        try:
            aliases: dict[str, list[str]] = {}
            for alias, version in self.client.get_registered_model(name).aliases.items():
                aliases.setdefault(str(version), []).append(alias)
        except MlflowException as exc:
            if self._is_not_found(exc):
                return []
            raise
        found = [version_record(mv) for mv in self.client.search_model_versions(f"name='{name}'")]
        return sorted(
            (VersionRecord(v.name, v.version, v.run_id, v.source, v.created_ms, v.tags, tuple(aliases.get(v.version, []))) for v in found),
            key=lambda v: int(v.version),
        )

    def versions_of_run(self, run_id: str) -> list[VersionRecord]:
        return sorted((version_record(mv) for mv in self.client.search_model_versions(f"run_id='{run_id}'")), key=lambda v: int(v.version))

    def artifact_text(self, run_id: str, path: str) -> str | None:
        """A small text artifact of a run, or None when it was not logged."""
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        try:
            return mlflow.artifacts.load_text(self.client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + path)
        except (MlflowException, OSError):
            return None


@dataclass
class PlatformRecords:
    """Everything lineage and the report read: MLflow, the index registry, ``dvc.lock`` by commit, and
    (optionally) the Prefect API. :class:`StaticRecords` is the same interface over records in memory.

    Args:
        mlflow: the MLflow view.
        read_index_registry: reads the index registry (called when needed; it may change between calls).
        project_root: the git work tree ``dvc.lock`` is read from.
        flow_run_lookup: asks the Prefect API about a flow run; None when no API is configured.
        links: UI base URLs.
    """

    mlflow: MlflowRecords
    read_index_registry: Callable[[], IndexRegistryRecord]
    project_root: Path
    flow_run_lookup: FlowRunLookup | None = None
    links: Links = field(default_factory=Links)
    _locks: dict[str | None, DvcLock] = field(default_factory=dict)

    def run(self, run_id: str) -> RunRecord | None:
        return self.mlflow.run(run_id)

    def all_runs(self) -> list[RunRecord]:
        return self.mlflow.all_runs()

    def version(self, name: str, version: str) -> VersionRecord | None:
        return self.mlflow.version(name, version)

    def alias(self, name: str, alias: str) -> VersionRecord | None:
        found = self.mlflow.alias(name, alias)
        return self.mlflow.version(found.name, found.version) if found else None  # with every alias of the version

    def versions_of_run(self, run_id: str) -> list[VersionRecord]:
        return self.mlflow.versions_of_run(run_id)

    def index_registry(self) -> IndexRegistryRecord:
        return self.read_index_registry()

    def dvc_lock(self, commit: str | None) -> DvcLock:
        """``dvc.lock`` at ``commit`` (None: the work tree), read once per commit."""
        if commit not in self._locks:
            self._locks[commit] = read_dvc_lock(self.project_root, commit)
        return self._locks[commit]

    def flow_run(self, flow_run_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(details, note)``: what the Prefect API says about a flow run, or a note saying why nothing."""
        return lookup_flow_run(self.flow_run_lookup, flow_run_id)


def lookup_flow_run(lookup: FlowRunLookup | None, flow_run_id: str) -> tuple[dict[str, Any] | None, str | None]:
    if lookup is None:
        return None, "Prefect API not consulted (no PREFECT_API_URL): the ids above come from MLflow tags"
    try:
        found = lookup(flow_run_id)
    except Exception as exc:  # noqa: BLE001 - optional enrichment: its absence is reported, not an error
        return None, f"Prefect API lookup failed ({type(exc).__name__}: {str(exc)[:200]})"
    if found is None:
        return None, "the Prefect API does not know this flow run (another server, or deleted)"
    return found, None


@dataclass
class StaticRecords:
    """The :class:`PlatformRecords` interface over records already in memory (a snapshot, a test)."""

    runs: list[RunRecord] = field(default_factory=list)
    model_versions: list[VersionRecord] = field(default_factory=list)
    registry: IndexRegistryRecord = field(default_factory=lambda: IndexRegistryRecord("docs-live"))
    locks: dict[str | None, DvcLock] = field(default_factory=dict)
    flow_runs: dict[str, dict[str, Any]] | None = None  # None: no Prefect API
    links: Links = field(default_factory=Links)

    def run(self, run_id: str) -> RunRecord | None:
        return next((r for r in self.runs if r.run_id == run_id), None)

    def all_runs(self) -> list[RunRecord]:
        return sorted(self.runs, key=lambda r: r.start_ms or 0, reverse=True)

    def version(self, name: str, version: str) -> VersionRecord | None:
        return next((v for v in self.model_versions if (v.name, v.version) == (name, str(version))), None)

    def alias(self, name: str, alias: str) -> VersionRecord | None:
        return next((v for v in self.model_versions if v.name == name and alias in v.aliases), None)

    def versions_of_run(self, run_id: str) -> list[VersionRecord]:
        return [v for v in self.model_versions if v.run_id == run_id]

    def index_registry(self) -> IndexRegistryRecord:
        return self.registry

    def dvc_lock(self, commit: str | None) -> DvcLock:
        return self.locks.get(commit) or DvcLock(f"commit {commit}" if commit else "work tree", missing="not in this snapshot")

    def flow_run(self, flow_run_id: str) -> tuple[dict[str, Any] | None, str | None]:
        lookup = None if self.flow_runs is None else self.flow_runs.get
        return lookup_flow_run(lookup, flow_run_id)


def platform_records(settings: Any, flow_run_lookup: FlowRunLookup | None = None, links: Links | None = None) -> PlatformRecords:
    """:class:`PlatformRecords` for the configured stores (MLflow, index registry, project root)."""
    from opsfabric import tracking
    from opsfabric.rag.settings import RagConfig
    from opsfabric.rag.versions import registry_path

    config = RagConfig(settings)
    return PlatformRecords(
        mlflow=MlflowRecords(tracking.mlflow_client(settings), settings.tracking.experiment_prefix),
        read_index_registry=lambda: read_index_registry(registry_path(config), settings.rag.store.alias),
        project_root=settings.project_root,
        flow_run_lookup=flow_run_lookup,
        links=links or Links(mlflow_ui=mlflow_ui_from_tracking_uri(settings.tracking_uri)),
    )


def file_md5_of_ref(project_root: Path, value: str) -> str | None:
    """The md5 of the file a ``data:<path>`` reference names (None for a folder, a hash or a missing file)."""
    from opsfabric.files import file_md5

    path = Path(value) if Path(value).is_absolute() else project_root / value
    return file_md5(path) if path.is_file() else None
