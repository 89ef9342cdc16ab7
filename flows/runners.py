"""Prefect plumbing shared by the flows: settings, task runner, batch names."""

from __future__ import annotations

from pathlib import Path

from prefect.task_runners import ThreadPoolTaskRunner

from opsfabric.errors import ConfigError
from opsfabric.settings import OrchestrationSettings, Settings, load_settings

# What decides the task runner; fixed when the flow process starts.
RUNNER_KEYS = ("task_runner", "dask_address", "dask_n_workers", "max_workers")


def flow_settings(config_files: list[str] | None) -> Settings:
    """Settings for a flow run: the repo's configs, ``OPSFABRIC_CONFIG``, env, plus ``config_files``.

    Project-relative paths resolve against ``orchestration.data_root`` when it is set (a deployment
    run from a git clone), else against the code's folder.

    Raises:
        ConfigError: ``config_files`` asks for another task runner than the one this process runs
            flows with (it is chosen when the process starts, from ``OPSFABRIC_CONFIG`` and the
            environment), instead of silently running on the other one.
    """
    settings = load_settings(*(config_files or []))
    data_root = settings.orchestration.data_root
    if data_root is not None and Path(data_root).resolve() != settings.project_root.resolve():
        # A deployment run works in a fresh git clone (code); data and a relative state_dir live in the
        # checkout the control room registered from. Configuration files still come from the clone.
        settings = load_settings(*(config_files or []), project_root=Path(data_root).resolve())
    if config_files:
        check_task_runner(settings.orchestration, load_settings().orchestration, config_files)
    from opsfabric.preflight import check_mlflow

    check_mlflow(settings)  # an unreachable MLflow server stops the run here, before it writes anything
    return settings


def check_task_runner(wanted: OrchestrationSettings, running: OrchestrationSettings, config_files: list[str]) -> None:
    """Raise ConfigError if ``wanted`` needs another task runner than the ``running`` process has."""
    differs = {k: (getattr(running, k), getattr(wanted, k)) for k in RUNNER_KEYS if getattr(running, k) != getattr(wanted, k)}
    if differs:
        changes = ", ".join(f"orchestration.{k}: {old!r} -> {new!r}" for k, (old, new) in differs.items())
        raise ConfigError(
            f"config_files {config_files} change the task runner ({changes}), which is chosen when the flow process starts",
            hint="set it in OPSFABRIC_CONFIG or OPSFABRIC_ORCHESTRATION__* for the process (a worker's or "
            "deployment's environment), or pass the file with --config to python -m flows.<name>",
        )


def configured_task_runner():
    """The task runner the configuration asks for: threads (default) or Dask (local cluster or address).

    Read when a flow module is imported, so ``OPSFABRIC_ORCHESTRATION__TASK_RUNNER=dask`` or a
    profile in ``OPSFABRIC_CONFIG`` switches every flow without code changes. Command lines that
    take ``--config`` files put them in ``OPSFABRIC_CONFIG`` before importing a flow
    (``opsfabric.cli``), so those files choose the runner too.
    """
    orchestration = load_settings().orchestration
    if orchestration.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if orchestration.dask_address:
            return DaskTaskRunner(address=orchestration.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": orchestration.dask_n_workers, "threads_per_worker": 1, "processes": True}
        )
    return ThreadPoolTaskRunner(max_workers=orchestration.max_workers)


def resolve_batch(settings: Settings, batch: str) -> Path:
    """A configured batch by name (``batch_02``) or any file path."""
    by_name = {settings.path(p).stem: settings.path(p) for p in settings.dataset.batches}
    if batch in by_name:
        return by_name[batch]
    return settings.path(batch)
