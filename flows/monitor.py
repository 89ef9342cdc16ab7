"""Monitor production batches with the champion; retrain when one drifted.

Without a ``batch`` the run monitors every batch not monitored yet: new files dropped in the
dataset's batch folder are found by the watermark (``opsfabric.ml.watermark``), each is monitored
once, even by two runs at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.retrain import retrain_and_gate
from flows.runners import configured_task_runner, flow_settings, resolve_batch
from opsfabric.ml import watermark
from opsfabric.ml.contract import DatasetContract
from opsfabric.settings import Settings
from tasks.common import current_lineage, retrying, run_dir
from tasks.data import prepare_dataset, validate_file
from tasks.drift import announce_drift, load_champion, monitor_batch

RetrainVia = Literal["inline", "event", "deployment"]
DEFAULT_RETRAIN_DEPLOYMENT = "retrain/retrain-on-drift"


def monitor_and_react(
    settings: Settings,
    path: Path,
    contract: DatasetContract,
    config_files: list[str] | None,
    retrain_on_drift: bool = True,
    retrain_via: RetrainVia | None = None,
    record: bool = True,
) -> dict:
    """validate batch → score with champion → Evidently drift + performance → verdict → drift event → retrain if needed.

    ``record``: mark the batch in the watermark (when it is one of its files), so the daily run of new
    batches does not monitor it again; the watermark's own claims mark theirs themselves.
    """
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
    via = (retrain_via or settings.orchestration.retrain_via) if retrain_on_drift else "none"
    if outcome.decision.approved:
        result["drift_event_id"] = announce_drift(settings, outcome, path, via, config_files)
        if retrain_on_drift:
            result["retrain_result"] = trigger_retrain(settings, path, contract, "; ".join(outcome.decision.reasons), config_files, via)
    if record:
        watermark.record_monitored(settings, path, {k: result.get(k) for k in ("drift_share", "retrain", "mlflow_run_id", "drift_event_id")})
    return result


def monitor_new_batches(
    settings: Settings, contract: DatasetContract, config_files: list[str] | None, retrain_on_drift: bool, retrain_via: RetrainVia | None
) -> dict:
    """claim the batches the watermark has not seen → monitor each → mark it monitored (a failed one is retried next run)."""
    folder = watermark.batch_folder(settings)
    with watermark.claim_new_batches(settings, folder, watermark.this_owner(flow_run.get_id())) as claim:
        get_run_logger().info(
            "%d new batch(es) in %s/%s: %s", len(claim.batches), folder.data_dir, folder.pattern, [b.name for b in claim.batches] or "none"
        )
        monitored = []
        for batch in claim.batches:
            result = monitor_and_react(settings, batch.path, contract, config_files, retrain_on_drift, retrain_via, record=False)
            claim.mark_monitored(batch, {k: result.get(k) for k in ("drift_share", "retrain", "mlflow_run_id", "drift_event_id")})
            monitored.append(result)
    return {"folder": str(folder.data_dir), "pattern": folder.pattern, "watermark": str(folder.watermark), "monitored": monitored}


@flow(name="monitor", task_runner=configured_task_runner(), log_prints=True)
def monitor_flow(
    batch: str | None = None,
    config_files: list[str] | None = None,
    retrain_on_drift: bool = True,
    retrain_via: RetrainVia | None = None,
) -> dict:
    """Check batches for drift and performance loss; retrain when the verdict says so.

    Args:
        batch: a configured batch name (``batch_02``) or a file path; empty: every batch in the dataset's
            folder not monitored yet (the watermark; each is monitored once).
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
        retrain_on_drift: retrain when the verdict says so (off: only report and emit the drift event).
        retrain_via: inline (in this run), event (the retrain deployment's automation reacts to the drift
            event), deployment (start the retrain deployment); empty: orchestration.retrain_via.
    """
    settings = flow_settings(config_files)
    _, contract = prepare_dataset(settings)
    if batch:
        return monitor_and_react(settings, resolve_batch(settings, batch), contract, config_files, retrain_on_drift, retrain_via)
    return monitor_new_batches(settings, contract, config_files, retrain_on_drift, retrain_via)


def trigger_retrain(
    settings: Settings, batch: Path, contract: DatasetContract, reason: str, config_files: list[str] | None, via: str
) -> dict:
    """Retrain as ``via`` says: a task group in this run, the drift event's automation, or a deployment run.

    ``inline`` is a task group, not a subflow: a Prefect 3.9 flow run waits up to ~1 s for its
    heartbeat on exit. ``event`` does nothing here: the drift event already went out and the retrain
    deployment's automation starts the run (one retraining, not two). A ``deployment`` run is
    fire-and-forget: it may gate after another run promoted meanwhile, which the gate's compare-and-set
    handles (it judges against the champion it finds under the lock).
    """
    if via == "event":
        return {"via": "event", "awaiting": "the retrain deployment's automation on opsfabric.drift.detected"}
    if via == "deployment":
        from prefect.deployments import run_deployment

        deployment = settings.orchestration.retrain_deployment or DEFAULT_RETRAIN_DEPLOYMENT
        parameters = {"recent_batches": [str(batch)], "reason": reason, "config_files": config_files}
        started = run_deployment(name=deployment, parameters=parameters, timeout=0)
        get_run_logger().info("retraining triggered as deployment %s: flow run %s", deployment, started.id)
        return {"via": "deployment", "deployment": deployment, "flow_run_id": str(started.id)}
    return retrain_and_gate(settings, settings.path(settings.dataset.reference), [batch], contract, reason)


def main(args: list[str]) -> None:
    """``python -m flows.monitor [--config FILE] [batch | --new]``: monitor one batch (default batch_01), or every new one."""
    from flows.monitor import monitor_flow  # imported after --config is in the environment: it picks the task runner

    batch = None if args[:1] == ["--new"] else (args[0] if args else "batch_01")
    print(json.dumps(monitor_flow(batch), indent=2, default=str))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
