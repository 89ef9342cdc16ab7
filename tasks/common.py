"""What every task shares: the flow-run lineage and a run-scoped work folder."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect.runtime import flow_run

from opsfabric.ml.lineage import lineage_for
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage


def current_lineage(settings: Settings, data_files: list[Path]) -> Lineage:
    """Lineage of the calling flow run: git commit, data hashes, config hash, Prefect run id and URL."""
    return lineage_for(settings, data_files=data_files, flow_run_id=flow_run.get_id(), flow_run_url=flow_run.get_flow_run_ui_url())


def retrying(task: Any, settings: Settings) -> Any:
    """``task`` with the configured retries (``orchestration.task_retries`` and its delay).

    Only for tasks that are safe to run again: they leave nothing half-done when they fail
    (registry writes roll back, loads have no side effect).
    """
    return task.with_options(
        retries=settings.orchestration.task_retries,
        retry_delay_seconds=settings.orchestration.task_retry_delay_seconds,
    )


def run_dir(settings: Settings, kind: str) -> Path:
    """A fresh folder for this flow run's outputs: ``<state_dir>/runs/<kind>/<time>-<flow run id>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_id = (flow_run.get_id() or "local")[:8]
    path = settings.state_dir / "runs" / kind / f"{stamp}-{run_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path
