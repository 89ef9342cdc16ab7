"""Monitor a production batch with the champion; trigger retraining when it drifted."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.retrain import retrain_flow
from flows.runners import configured_task_runner, flow_settings, resolve_batch
from opsfabric.ml.steps import DatasetContract
from opsfabric.settings import Settings
from tasks.common import current_lineage, run_dir
from tasks.data import prepare_dataset, validate_file
from tasks.drift import load_champion, monitor_batch


def monitor_and_react(
    settings: Settings, path: Path, contract: DatasetContract, config_files: list[str] | None, retrain_on_drift: bool = True
) -> dict:
    """validate batch → score with champion → Evidently drift + performance → verdict → retrain if needed."""
    out_dir = run_dir(settings, "monitor")
    validate_file(settings, path, contract, out_dir / "validation", require_label=False)
    champion = load_champion(settings)
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
        result["retrain_result"] = trigger_retrain(settings, [str(path)], "; ".join(outcome.decision.reasons), config_files)
    return result


@flow(name="monitor", task_runner=configured_task_runner(), log_prints=True)
def monitor_flow(batch: str, config_files: list[str] | None = None, retrain_on_drift: bool = True) -> dict:
    """Check one batch for drift and performance loss; retrain (subflow or deployment) when it says so.

    Args:
        batch: a configured batch name (``batch_02``) or a file path.
        config_files: extra YAML overlays.
        retrain_on_drift: trigger the retrain flow when the verdict says so.
    """
    settings = flow_settings(config_files)
    _, contract = prepare_dataset(settings)
    return monitor_and_react(settings, resolve_batch(settings, batch), contract, config_files, retrain_on_drift)


def trigger_retrain(settings: Settings, recent: list[str], reason: str, config_files: list[str] | None) -> dict:
    """Retrain as a subflow, or through a deployment when ``orchestration.retrain_deployment`` is set."""
    deployment = settings.orchestration.retrain_deployment
    parameters = {"recent_batches": recent, "reason": reason, "config_files": config_files}
    if deployment:
        from prefect.deployments import run_deployment

        flow_run = run_deployment(name=deployment, parameters=parameters, timeout=0)
        get_run_logger().info("retraining triggered as deployment %s: flow run %s", deployment, flow_run.id)
        return {"deployment": deployment, "flow_run_id": str(flow_run.id)}
    return retrain_flow(**parameters)


if __name__ == "__main__":
    import sys

    print(monitor_flow(sys.argv[1] if len(sys.argv) > 1 else "batch_01"))
