"""Monitor a production batch with the champion; trigger retraining when it drifted."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from flows.retrain import retrain_and_gate
from flows.runners import configured_task_runner, flow_settings, resolve_batch
from opsfabric.ml.contract import DatasetContract
from opsfabric.settings import Settings
from tasks.common import current_lineage, retrying, run_dir
from tasks.data import prepare_dataset, validate_file
from tasks.drift import load_champion, monitor_batch


def monitor_and_react(
    settings: Settings, path: Path, contract: DatasetContract, config_files: list[str] | None, retrain_on_drift: bool = True
) -> dict:
    """validate batch → score with champion → Evidently drift + performance → verdict → retrain if needed."""
    out_dir = run_dir(settings, "monitor")
    validate_file(settings, path, contract, out_dir / "validation", require_label=False)
    champion = retrying(load_champion, settings)(settings)
    outcome = monitor_batch(settings, path, contract, out_dir, champion, current_lineage(settings, [path]))
    result = {
        "batch": outcome.batch,
        "champion_version": outcome.champion_version,
        "drift_share": outcome.report.drift_share,
        "drifted_features": outcome.report.drifted_features,
        "retrain": outcome.decision.approved,
        "reasons": outcome.decision.reasons,
        "mlflow_run_id": outcome.mlflow_run_id,
        "report_html": outcome.report.html_path,
    }
    if outcome.decision.approved and retrain_on_drift:
        result["retrain_result"] = trigger_retrain(settings, path, contract, "; ".join(outcome.decision.reasons), config_files)
    return result


@flow(name="monitor", task_runner=configured_task_runner(), log_prints=True)
def monitor_flow(batch: str, config_files: list[str] | None = None, retrain_on_drift: bool = True) -> dict:
    """Check one batch for drift and performance loss; retrain (task group or deployment) when it says so.

    Args:
        batch: a configured batch name (``batch_02``) or a file path.
        config_files: extra YAML overlays.
        retrain_on_drift: trigger the retrain flow when the verdict says so.
    """
    settings = flow_settings(config_files)
    _, contract = prepare_dataset(settings)
    return monitor_and_react(settings, resolve_batch(settings, batch), contract, config_files, retrain_on_drift)


def trigger_retrain(settings: Settings, batch: Path, contract: DatasetContract, reason: str, config_files: list[str] | None) -> dict:
    """Retrain in this flow run (a task group), or through a deployment when ``orchestration.retrain_deployment`` is set.

    A task group, not a subflow: a Prefect 3.9 flow run waits up to ~1 s for its heartbeat on exit.
    A deployment run is fire-and-forget: it may gate after another run promoted meanwhile, which the
    gate's compare-and-set handles (it judges against the champion it finds under the lock).
    """
    deployment = settings.orchestration.retrain_deployment
    if deployment:
        from prefect.deployments import run_deployment

        parameters = {"recent_batches": [str(batch)], "reason": reason, "config_files": config_files}
        flow_run = run_deployment(name=deployment, parameters=parameters, timeout=0)
        get_run_logger().info("retraining triggered as deployment %s: flow run %s", deployment, flow_run.id)
        return {"deployment": deployment, "flow_run_id": str(flow_run.id)}
    return retrain_and_gate(settings, settings.path(settings.dataset.reference), [batch], contract, reason)


def main(args: list[str]) -> None:
    """``python -m flows.monitor [--config FILE] [batch]``: monitor one batch (default batch_01)."""
    from flows.monitor import monitor_flow  # imported after --config is in the environment: it picks the task runner

    print(json.dumps(monitor_flow(args[0] if args else "batch_01"), indent=2, default=str))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
