"""Every deployment, named once: which flow, which schedule, which default parameters, which automation.

``control_room.py`` (``make serve``) registers them from the git source with the local work pool
and runs a worker; ``deploy.py`` registers them with any work pool (workers on other machines clone
the same repository); ``serve.py`` runs them in one long-lived process (no work pool needed).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from opsfabric.events import DRIFT_DETECTED, RETRAIN_VIA_LABEL


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    # "flows.<module>.<flow function>": a module path (no colon: Prefect's form for it), not a file path. A worker then imports the flow
    # as flows.<module> (from the clone it runs in), and the flow pickled into a Dask task graph is
    # importable by that name on the scheduler and the Dask workers (a file-path entrypoint is loaded
    # under a top-level name like `ml_pipeline` that no other process can import).
    entrypoint: str
    cron: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    tags: tuple[str, ...] = ()
    triggers: Callable[[], list] | None = None  # automations that run this deployment (built lazily: imports Prefect)

    def build_triggers(self) -> list:
        return self.triggers() if self.triggers else []

    def load_flow(self):
        module, function = self.entrypoint.rsplit(".", 1)
        return getattr(importlib.import_module(module), function)


def retrain_triggers() -> list:
    """Run the retrain deployment on ``opsfabric.drift.detected`` from a monitor that left retraining to it.

    The monitor labels the event's resource with ``opsfabric.retrain-via``; only ``event`` (the
    control room's setting) asks for this automation, so an ``inline`` monitor never retrains twice.
    """
    from prefect.events import DeploymentEventTrigger

    return [
        DeploymentEventTrigger(
            name="retrain-on-drift-event",
            description=f"Retrain when a monitor emits {DRIFT_DETECTED} with retrain_via=event (orchestration.retrain_via).",
            expect={DRIFT_DETECTED},
            match={"prefect.resource.id": "opsfabric.dataset.*", RETRAIN_VIA_LABEL: "event"},
            parameters={
                "recent_batches": "{{ event.payload.recent_batches }}",
                "reason": "{{ event.payload.reason }}",
                "config_files": "{{ event.payload.config_files }}",
            },
        )
    ]


DEPLOYMENTS: list[DeploymentSpec] = [
    DeploymentSpec(
        name="ml-pipeline-weekly",
        entrypoint="flows.ml_pipeline.ml_pipeline_flow",
        cron="0 3 * * 1",
        description="Full ML lifecycle: validate, train + gate, monitor every batch, retrain on drift, score.",
        tags=("ml",),
    ),
    DeploymentSpec(
        name="train-on-demand",
        entrypoint="flows.train.train_flow",
        description="Validate the reference batch, train a candidate and gate it against the champion (first champion included).",
        tags=("ml",),
    ),
    DeploymentSpec(
        name="monitor-new-batches-daily",
        entrypoint="flows.monitor.monitor_flow",
        cron="0 6 * * *",
        description="Drift + performance check of every batch not monitored yet (the watermark: new files in the dataset's "
        "batch folder are found, each monitored once); emits opsfabric.drift.detected when one drifted.",
        tags=("ml", "monitoring"),
    ),
    DeploymentSpec(
        name="retrain-on-drift",
        entrypoint="flows.retrain.retrain_flow",
        parameters={"recent_batches": ["batch_04"]},
        description="Retrain on reference + recent data and gate. Its automation runs it on opsfabric.drift.detected "
        "from a monitor with orchestration.retrain_via=event (the control room's worker).",
        tags=("ml",),
        triggers=retrain_triggers,
    ),
    DeploymentSpec(
        name="score-on-demand",
        entrypoint="flows.score.score_flow",
        parameters={"batch": "batch_04"},
        description="Batch scoring with models:/<name>@champion.",
        tags=("ml",),
    ),
    DeploymentSpec(
        name="rag-pipeline-nightly",
        entrypoint="flows.rag_pipeline.rag_pipeline_flow",
        cron="0 2 * * *",
        description="Incremental ingestion of the corpus into a new index version, golden-set evaluation, "
        "and the gate that moves the live alias. An unchanged corpus embeds nothing.",
        tags=("rag",),
    ),
    DeploymentSpec(
        name="rag-eval-on-demand",
        entrypoint="flows.rag_eval.rag_eval_flow",
        description="Re-evaluate an index version (default: the newest build) against the live one and gate the alias.",
        tags=("rag", "evaluation"),
    ),
    DeploymentSpec(
        name="rag-rollback",
        entrypoint="flows.rag_index.rag_rollback_flow",
        description="Point the live alias back at the previous live index version (or at parameter `to`).",
        tags=("rag", "operations"),
    ),
    DeploymentSpec(
        name="rag-ask",
        entrypoint="flows.rag_index.rag_ask_flow",
        parameters={"question": "When was the Python Software Foundation formed?"},
        description="Answer one question from the live index with citations (extractive unless an LLM endpoint is set).",
        tags=("rag",),
    ),
    DeploymentSpec(
        name="agent-regression-nightly",
        entrypoint="flows.agent_regression.agent_regression_flow",
        cron="30 2 * * *",
        description="Replay every golden-trace scenario of the ops agent and diff each run against its golden; "
        "fails when a scenario that passed last time fails now.",
        tags=("agents", "evaluation"),
    ),
    DeploymentSpec(
        name="agent-compare",
        entrypoint="flows.agent_regression.agent_compare_flow",
        parameters={"config_a": "configs/profiles/local-llm.yaml", "config_b": "configs/profiles/local-llm.yaml,configs/profiles/local-llm-no-examples.yaml", "trials": 5},
        description="Two agent configurations side by side on the golden scenarios with the same seeds: exact McNemar test per "
        "scenario, the suite effect with its bootstrap interval, cost per passing trial (MLflow experiment opsfabric-agent-compare).",
        tags=("agents", "evaluation"),
    ),
    DeploymentSpec(
        name="agent-ask",
        entrypoint="flows.agent.agent_ask_flow",
        parameters={"request": "show the index status"},
        description="Ask the ops agent; a risky action pauses the flow run until an operator approves, edits or denies it here.",
        tags=("agents", "operations"),
    ),
    DeploymentSpec(
        name="ops-report-daily",
        entrypoint="flows.ops_report.ops_report_flow",
        cron="30 6 * * *",
        parameters={"since_days": 30},
        description="One report across ML, RAG and agents: champion and its age, drift per batch, live index and scores, "
        "agent pass rate and trends, anything failing (HTML in MLflow experiment opsfabric-ops-report, Prefect artifact ops-report).",
        tags=("ops",),
    ),
]
