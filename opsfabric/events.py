"""The Prefect events OpsFabric emits, named once: the monitor's drift verdict drives retraining.

``opsfabric.drift.detected`` is emitted by the monitor when its verdict says "retrain". Its resource
is the dataset (``opsfabric.dataset.<name>``); the MLflow run of the verdict and the batch's data
hash are related resources; the payload carries the verdict. The retrain deployment carries an
automation (``deployments.definitions.retrain_triggers``) that runs it from this event when the
resource's ``opsfabric.retrain-via`` label is ``event`` (``orchestration.retrain_via: event``, what
the control room's worker uses). Under ``inline`` the event is still emitted (the UI's event feed
shows every verdict) but no automation reacts to it: the monitor retrained in its own run.
"""

from __future__ import annotations

from typing import Any

DRIFT_DETECTED = "opsfabric.drift.detected"
RETRAIN_VIA_LABEL = "opsfabric.retrain-via"


def dataset_resource_id(dataset: str) -> str:
    return f"opsfabric.dataset.{dataset}"


def drift_detected_event(
    *,
    dataset: str,
    batch: str,
    batch_path: str,
    batch_md5: str,
    drift_share: float,
    drifted_features: list[str],
    reasons: list[str],
    champion_version: str | None,
    mlflow_run_id: str | None,
    retrain_via: str,
    config_files: list[str] | None,
) -> dict[str, Any]:
    """The event as ``emit_event`` keyword arguments (plain data: testable without Prefect)."""
    related = [
        {"prefect.resource.id": f"opsfabric.data.md5.{batch_md5}", "prefect.resource.role": "data", "prefect.resource.name": batch},
    ]
    if mlflow_run_id:
        related.append(
            {"prefect.resource.id": f"mlflow.run.{mlflow_run_id}", "prefect.resource.role": "mlflow-run", "prefect.resource.name": f"monitor-{batch}"}
        )
    return {
        "event": DRIFT_DETECTED,
        "resource": {"prefect.resource.id": dataset_resource_id(dataset), "prefect.resource.name": dataset, RETRAIN_VIA_LABEL: retrain_via},
        "related": related,
        "payload": {
            "batch": batch,
            "batch_path": batch_path,
            "recent_batches": [batch_path],
            "drift_share": drift_share,
            "drifted_features": drifted_features,
            "reasons": reasons,
            "reason": "; ".join(reasons),
            "champion_version": champion_version,
            "data_md5": batch_md5,
            "mlflow_run_id": mlflow_run_id,
            "config_files": config_files,
        },
    }


def emit(event: dict[str, Any]) -> str | None:
    """Send the event to the Prefect API this process talks to; its id, or None if events are off."""
    from prefect.events import emit_event

    sent = emit_event(**event)
    return str(sent.id) if sent is not None else None
