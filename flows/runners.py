"""Prefect plumbing shared by the flows: settings, task runner, batch names."""

from __future__ import annotations

from pathlib import Path

from prefect.task_runners import ThreadPoolTaskRunner

from opsfabric.settings import Settings, load_settings


def flow_settings(config_files: list[str] | None) -> Settings:
    """Settings for a flow run: the repo's configs, ``OPSFABRIC_CONFIG``, env, plus ``config_files``."""
    return load_settings(*(config_files or []))


def configured_task_runner():
    """The task runner the configuration asks for: threads (default) or Dask (local cluster or address).

    Read when a flow module is imported, so ``OPSFABRIC_ORCHESTRATION__TASK_RUNNER=dask`` or a
    profile in ``OPSFABRIC_CONFIG`` switches every flow without code changes.
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
