"""One typed configuration for every OpsFabric job.

Sources, lowest to highest precedence:

1. ``configs/base.yaml``: infrastructure and dataset definition (where things live, which engines).
2. ``params.yaml``: experiment parameters that DVC tracks (``dvc params diff``, ``dvc exp run -S``).
3. Extra YAML files named in ``OPSFABRIC_CONFIG`` (comma-separated): profiles such as
   ``configs/profiles/server.yaml`` or dataset variants such as ``configs/datasets/breast_cancer.yaml``.
4. Environment variables ``OPSFABRIC_<SECTION>__<KEY>`` (for example
   ``OPSFABRIC_TRACKING__URI=http://mlflow:5000``).
5. Keyword arguments to :func:`load_settings` (tests use these).

Every model forbids unknown keys, so a typo in a YAML file is an error that names the key.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from opsfabric.agents.settings import AgentsSettings
from opsfabric.llm.settings import LocalLLMSettings
from opsfabric.errors import ConfigError
from opsfabric.rag.settings import RagSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG_FILES = ("configs/base.yaml", "params.yaml")
# Sections a YAML overlay replaces wholesale instead of merging key by key: a dataset variant must
# not inherit the churn dataset's categories or ranges.
REPLACED_SECTIONS = frozenset({"dataset"})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------
# Infrastructure
# --------------------------------------------------------------------------------------------
class TrackingSettings(Section):
    """Where MLflow tracking and the model registry live."""

    uri: str | None = Field(
        default=None,
        description="MLflow tracking URI. None: a SQLite store under state_dir/mlflow (embedded default).",
    )
    registry_uri: str | None = Field(default=None, description="Model registry URI; None: same as uri.")
    artifact_location: str | None = Field(
        default=None, description="Artifact root for new experiments; None: state_dir/mlflow/artifacts."
    )
    experiment_prefix: str = "opsfabric"


class ServersSettings(Section):
    """How long a job tries a configured server (MLflow, Prefect API) before it stops with a named error."""

    connect_attempts: int = Field(default=3, ge=1, description="Health checks before giving up (and MLflow's per-request retries).")
    connect_backoff_seconds: float = Field(default=1.0, ge=0, description="Wait before the 2nd attempt; doubles each time.")
    connect_timeout_seconds: float = Field(default=3.0, gt=0, description="Timeout of one health check.")


class FileLockSettings(Section):
    """A kernel file lock under ``<state_dir>/locks``: every process of one machine (the embedded default)."""

    kind: Literal["file"] = "file"
    timeout_seconds: float = Field(default=300.0, gt=0, description="Wait at most this long for another holder.")


class PrefectLockSettings(Section):
    """A Prefect global concurrency limit of one slot: every machine that shares one Prefect server."""

    kind: Literal["prefect"] = "prefect"
    timeout_seconds: float = Field(default=300.0, gt=0, description="Wait at most this long for another holder.")
    prefect_limit_prefix: str = Field(default="opsfabric", description="Limits are named <prefix>-<resource>.")
    lease_seconds: float = Field(
        default=60.0, ge=30, description="Prefect renews the slot's lease while the holder lives; a dead holder's expires after this."
    )


LockSettings = Annotated[Union[FileLockSettings, PrefectLockSettings], Field(discriminator="kind")]


class GitSourceSettings(Section):
    """The git repository a worker clones for every flow run of a deployment."""

    url: str | None = Field(
        default=None,
        description="Repository URL; None: this checkout's `git remote get-url origin`, else a file:// URL of the checkout.",
    )
    ref: str | None = Field(default=None, description="Branch to clone; None: the checkout's current branch.")


class ControlRoomSettings(Section):
    """`make serve` (python -m deployments.control_room): one Prefect server with its UI and one process worker."""

    host: str = Field(default="127.0.0.1", description="Interface the server binds to (loopback: this machine only).")
    port: int = Field(default=4200, ge=1, le=65535, description="API and UI port (also PREFECT_SERVER_API_PORT).")
    work_pool: str = Field(default="opsfabric", description="Process work pool the deployments are registered with.")


class OrchestrationSettings(Section):
    """How Prefect runs the flows.

    The task runner is fixed when a flow process starts (``OPSFABRIC_CONFIG``, environment, or the
    ``--config`` of ``python -m flows.<name>``): a ``config_files`` parameter that asks for another
    one is refused by ``flows.runners.flow_settings`` rather than silently ignored.
    """

    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = Field(default=None, description="Existing Dask scheduler; None: a local cluster.")
    dask_n_workers: int = 2
    max_workers: int = 4
    task_retries: int = Field(default=2, ge=0, description="Retries of the tasks that are safe to retry (registry, loading).")
    task_retry_delay_seconds: float = Field(default=2.0, ge=0)
    lock: LockSettings = Field(default_factory=FileLockSettings, description="Guards every alias move and registry write.")
    retrain_deployment: str | None = Field(
        default=None,
        description="The deployment ('flow-name/deployment-name') that retrain_via=deployment runs; None: 'retrain/retrain-on-drift'.",
    )
    retrain_via: Literal["inline", "event", "deployment"] = Field(
        default="inline",
        description="How the monitor retrains on drift: 'inline' (a task group in its own flow run: make run, dvc repro), "
        "'event' (it emits opsfabric.drift.detected and the retrain deployment's automation starts the run: the control "
        "room), 'deployment' (it starts retrain_deployment itself, fire-and-forget).",
    )
    data_root: Path | None = Field(
        default=None,
        description="Folder the project-relative paths (dataset, corpus, golden sets, a relative state_dir) resolve "
        "against in a flow run; None: the folder the code runs from. The control room sets it to its checkout, because a "
        "worker runs each deployment from a fresh git clone that holds code, not data.",
    )
    source: GitSourceSettings = Field(
        default_factory=GitSourceSettings, description="Where workers fetch the deployments' code from."
    )
    control_room: ControlRoomSettings = Field(
        default_factory=ControlRoomSettings, description="`make serve`: the local server, UI and worker."
    )


class DatasetSettings(Section):
    """A tabular classification dataset, described by configuration alone.

    ``reference`` is the training batch; ``batches`` are later production batches in time order.
    Paths are relative to the project root unless absolute. Files may be CSV or Parquet.
    """

    name: str = "churn"
    data_dir: str = Field(
        default="data/raw/churn",
        description="Folder holding the reference and batch files: what the DVC stages track (dvc.yaml reads "
        "this key from configs/base.yaml).",
    )
    reference: str = "data/raw/churn/reference.parquet"
    batches: list[str] = Field(default_factory=list)
    target: str = "churned"
    positive_label: Any = 1
    time_column: str | None = None
    id_column: str | None = None
    numeric_features: list[str] | None = Field(default=None, description="None: inferred from dtypes.")
    categorical_features: list[str] | None = Field(default=None, description="None: inferred from dtypes.")
    categories: dict[str, list[str]] = Field(
        default_factory=dict, description="Allowed values per categorical column; missing: learned from reference."
    )
    ranges: dict[str, tuple[float | None, float | None]] = Field(
        default_factory=dict, description="Allowed [min, max] per numeric column (None = open)."
    )
    batch_pattern: str | None = Field(
        default=None,
        description="Glob, relative to data_dir, of the production batch files the monitor's watermark picks up (new files "
        "dropped there are found); None: 'batch_*' with the suffix of the configured files (batch_*.parquet, batch_*.csv).",
    )
    generator: Literal["churn", "sklearn_breast_cancer", "none"] = Field(
        default="churn", description="Which generator writes the files, if any ('none': files already exist)."
    )

    @model_validator(mode="after")
    def _files_inside_data_dir(self) -> "DatasetSettings":
        root = Path(self.data_dir)
        outside = [f for f in [self.reference, *self.batches] if not Path(f).is_relative_to(root)]
        if outside:
            raise ValueError(f"files {outside} are not inside dataset.data_dir {self.data_dir!r} (the folder DVC tracks)")
        return self


# --------------------------------------------------------------------------------------------
# Experiment parameters (params.yaml, tracked by DVC)
# --------------------------------------------------------------------------------------------
class GenerateParams(Section):
    seed: int = 42
    reference_rows: int = 6000
    batch_rows: int = 2500
    start_date: str = "2025-01-01"


class ValidationParams(Section):
    min_rows: int = 50
    max_missing_share: float = 0.2
    max_duplicate_share: float = 0.05
    require_label: bool = True


class ModelParams(Section):
    kind: Literal["gradient_boosting", "random_forest", "logistic_regression"] = "gradient_boosting"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class TrainParams(Section):
    seed: int = 7
    test_size: float = Field(default=0.25, gt=0, lt=1)
    model: ModelParams = Field(default_factory=ModelParams)
    decision_threshold: float = Field(
        default=0.5, gt=0, lt=1, description="Churn probability at or above which a row is labelled positive; recorded with the model."
    )


class GateParams(Section):
    metric: Literal["roc_auc", "f1", "accuracy"] = "roc_auc"
    min_improvement: float = Field(default=0.005, description="Candidate must beat champion by this margin.")
    floor: float = Field(default=0.7, description="Every candidate must reach this score to be promoted.")


class DriftParams(Section):
    drift_share_threshold: float = Field(
        default=0.3, description="Retrain when at least this share of features drifted."
    )
    performance_drop_threshold: float = Field(
        default=0.03, description="Retrain when the gate metric fell by at least this much vs reference."
    )
    sample_rows: int | None = Field(
        default=None, description="Evaluate drift on a seeded sample of this many rows per side (None: all)."
    )


class RetrainParams(Section):
    recent_eval_share: float = Field(
        default=0.4, gt=0, lt=1, description="Share of recent data held out to evaluate candidate vs champion."
    )
    recent_weight_share: float = Field(
        default=0.8,
        gt=0,
        lt=1,
        description="Share of the total sample weight given to recent rows when retraining on reference + recent.",
    )


class MLParams(Section):
    generate: GenerateParams = Field(default_factory=GenerateParams)
    validation: ValidationParams = Field(default_factory=ValidationParams)
    train: TrainParams = Field(default_factory=TrainParams)
    gate: GateParams = Field(default_factory=GateParams)
    drift: DriftParams = Field(default_factory=DriftParams)
    retrain: RetrainParams = Field(default_factory=RetrainParams)
    registered_model: str = "churn-classifier"
    champion_alias: str = "champion"


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="OPSFABRIC_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    project_root: Path = PROJECT_ROOT
    state_dir: Path = Field(default=Path(".opsfabric"), description="Local state: MLflow, Prefect, Qdrant, caches.")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    servers: ServersSettings = Field(default_factory=ServersSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    ml: MLParams = Field(default_factory=MLParams)
    rag: RagSettings = Field(default_factory=RagSettings)
    agents: AgentsSettings = Field(default_factory=AgentsSettings)
    llm: LocalLLMSettings = Field(default_factory=LocalLLMSettings)

    @model_validator(mode="after")
    def _resolve_paths(self) -> "Settings":
        if not self.state_dir.is_absolute():
            self.state_dir = (self.project_root / self.state_dir).resolve()
        return self

    @model_validator(mode="after")
    def _resolve_local_llm(self) -> "Settings":
        # base_url "local" in a client section means the server `make llm` starts: one port to change
        from opsfabric.llm.settings import resolve_base_url

        host, port = self.llm.server.host, self.llm.server.port
        if getattr(self.agents.model, "base_url", None) is not None:
            self.agents.model.base_url = resolve_base_url(self.agents.model.base_url, host, port)
        self.rag.llm.base_url = resolve_base_url(self.rag.llm.base_url, host, port)
        return self

    @property
    def uses_local_llm(self) -> bool:
        """Whether a client section points at the local model server (``make serve`` then starts it)."""
        from opsfabric.llm.settings import local_url

        local = local_url(self.llm.server.host, self.llm.server.port)
        return getattr(self.agents.model, "base_url", None) == local or self.rag.llm.base_url == local

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs (already merged with YAML by load_settings) win over env only for keys the
        # caller set explicitly; YAML values are passed as defaults through _YamlDefaults.
        return (init_settings, env_settings, _YamlDefaults(settings_cls))

    # ---- derived locations -------------------------------------------------------------------
    def path(self, relative: str | Path) -> Path:
        """Resolve a project-relative path (absolute paths pass through)."""
        p = Path(relative)
        return p if p.is_absolute() else self.project_root / p

    @property
    def mlflow_dir(self) -> Path:
        return self.state_dir / "mlflow"

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        return self.tracking.registry_uri or self.tracking_uri

    @property
    def artifact_location(self) -> str:
        return self.tracking.artifact_location or (self.mlflow_dir / "artifacts").as_uri()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(content).__name__}")
    return content


def merge_config(base: dict[str, Any], overlay: dict[str, Any], *, depth: int = 0) -> dict[str, Any]:
    """Deep-merge ``overlay`` into ``base``.

    Replaced whole instead of merged: sections in REPLACED_SECTIONS, and a mapping whose ``kind``
    changes (a discriminated choice such as ``agents.model`` or ``orchestration.lock``: the keys of
    one kind mean nothing to another).
    """
    merged = dict(base)
    for key, value in overlay.items():
        old = merged.get(key)
        kind_changes = isinstance(value, dict) and isinstance(old, dict) and "kind" in value and value["kind"] != old.get("kind")
        replace = (depth == 0 and key in REPLACED_SECTIONS) or kind_changes
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not replace:
            merged[key] = merge_config(merged[key], value, depth=depth + 1)
        else:
            merged[key] = value
    return merged


def config_files(extra: list[str | Path] | None = None, root: Path = PROJECT_ROOT) -> list[Path]:
    """The YAML files that make up the configuration, in precedence order."""
    names: list[str | Path] = list(BASE_CONFIG_FILES)
    env_files = os.environ.get("OPSFABRIC_CONFIG", "")
    names += [n.strip() for n in env_files.split(",") if n.strip()]
    names += list(extra or [])
    return [Path(n) if Path(n).is_absolute() else root / n for n in names]


# The YAML files of the load_settings call in progress; a context variable, so threads (Prefect
# tasks) loading different configurations at once do not see each other's files.
_CONFIG_FILES: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("opsfabric_config_files", default=None)
# The keyword overrides of the load_settings call in progress (already merged with the YAML).
_OVERRIDES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("opsfabric_overrides", default=None)


def _drop_superseded_kinds(yaml_part: dict[str, Any], overrides: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """YAML without the mappings whose ``kind`` an override or environment variable changes.

    pydantic-settings deep-merges its sources, so the YAML's keys of one kind (``agents.model``'s
    offline planner settings) would leak into an overriding mapping of another kind (``openai``).
    """
    kept: dict[str, Any] = {}
    for key, value in yaml_part.items():
        here = (*path, key)
        override = overrides.get(key) if isinstance(overrides, dict) else None
        if isinstance(value, dict) and "kind" in value:
            env_kind = os.environ.get("OPSFABRIC_" + "__".join(here).upper() + "__KIND")
            override_kind = override.get("kind") if isinstance(override, dict) else None
            if any(k is not None and k != value["kind"] for k in (env_kind, override_kind)):
                continue
        kept[key] = _drop_superseded_kinds(value, override or {}, here) if isinstance(value, dict) else value
    return kept


class _YamlDefaults(PydanticBaseSettingsSource):
    """Feeds the merged YAML files to pydantic-settings at the lowest precedence."""

    def __call__(self) -> dict[str, Any]:
        files = _CONFIG_FILES.get()
        merged: dict[str, Any] = {}
        for file in config_files() if files is None else files:
            merged = merge_config(merged, _read_yaml(file))
        return _drop_superseded_kinds(merged, _OVERRIDES.get() or {})

    def get_field_value(self, field, field_name):  # pragma: no cover - required by the ABC
        return None, field_name, False


def load_settings(*extra_files: str | Path, root: Path = PROJECT_ROOT, **overrides: Any) -> Settings:
    """Load the configuration from YAML files, the environment and explicit overrides.

    Args:
        *extra_files: more YAML overlays after base.yaml, params.yaml and ``OPSFABRIC_CONFIG``.
        root: project root the relative file names and paths resolve against.
        **overrides: top-level fields to set (nested dicts merge over the YAML values).

    Raises:
        ConfigError: a file is missing or malformed, or a key is unknown or has a bad value; the
            message names every such key (``rag.chunking.chunk_sise``) and where it was set (the
            file, the environment variable, or the caller).
    """
    files = config_files(list(extra_files), root)
    token = _CONFIG_FILES.set(files)
    overrides_token = _OVERRIDES.set(overrides)
    try:
        yaml_values = _YamlDefaults(Settings)()
        # Overrides merge over YAML for nested sections so a test can set one key of a section.
        init = {k: merge_config(yaml_values.get(k, {}), v) if isinstance(v, dict) else v for k, v in overrides.items()}
        init.setdefault("project_root", root)
        try:
            return Settings(**init)
        except ValidationError as exc:
            problems = [_describe_error(err, files, overrides) for err in exc.errors()]
            raise ConfigError(
                "invalid configuration:\n" + "\n".join(f"  {p}" for p in problems),
                hint="fix or remove the key named above; every section forbids unknown keys",
            ) from None
    finally:
        _CONFIG_FILES.reset(token)
        _OVERRIDES.reset(overrides_token)


def _describe_error(error: dict, files: list[Path], overrides: dict[str, Any]) -> str:
    """``key: message (set in <where>)`` for one pydantic error."""
    # Discriminated unions add the tag ('file', 'prefect') to the location: it is not a key.
    loc = [str(p) for p in error["loc"] if not (isinstance(p, str) and p in {"file", "prefect"} and error["loc"][0] == "orchestration")]
    key = ".".join(loc)
    return f"{key}: {error['msg']} (set in {_origin(loc, files, overrides)})"


def _origin(loc: list[str], files: list[Path], overrides: dict[str, Any]) -> str:
    """Where the value at ``loc`` came from, highest precedence first: caller, environment, YAML file."""
    if _has_path(overrides, loc):
        return "load_settings() arguments"
    prefix = "OPSFABRIC_" + "__".join(loc).upper()
    for env in sorted(os.environ):
        if env == prefix or env.startswith(prefix + "__") or prefix.startswith(env + "__"):
            return f"environment variable {env}"
    for path in reversed(files):
        try:
            if _has_path(_read_yaml(path), loc):
                return str(path)
        except ConfigError:
            continue
    return "defaults"


def _has_path(mapping: Any, loc: list[str]) -> bool:
    for part in loc:
        if not isinstance(mapping, dict) or part not in mapping:
            return False
        mapping = mapping[part]
    return True
