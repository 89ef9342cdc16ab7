"""Every deployment, named once: which flow, which schedule, which default parameters.

``serve.py`` runs them in one long-lived process (simplest: no work pool needed); ``deploy.py``
registers them with a work pool so Prefect workers on other machines pick up the runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str  # "flows/<module>.py:<flow function>"
    cron: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    tags: tuple[str, ...] = ()

    def load_flow(self):
        path, function = self.entrypoint.split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        return getattr(module, function)


DEPLOYMENTS: list[DeploymentSpec] = [
    DeploymentSpec(
        name="ml-pipeline-weekly",
        entrypoint="flows/ml_pipeline.py:ml_pipeline_flow",
        cron="0 3 * * 1",
        description="Full ML lifecycle: validate, train + gate, monitor every batch, retrain on drift, score.",
        tags=("ml",),
    ),
    DeploymentSpec(
        name="monitor-latest-daily",
        entrypoint="flows/monitor.py:monitor_flow",
        cron="0 6 * * *",
        parameters={"batch": "batch_04"},
        description="Drift + performance check of the newest batch; triggers retraining when it drifted.",
        tags=("ml", "monitoring"),
    ),
    DeploymentSpec(
        name="retrain-on-drift",
        entrypoint="flows/retrain.py:retrain_flow",
        parameters={"recent_batches": ["batch_04"]},
        description="Retrain on reference + recent data and gate; set orchestration.retrain_deployment to "
        "'retrain/retrain-on-drift' to have monitor trigger this deployment instead of retraining inside its own flow run.",
        tags=("ml",),
    ),
    DeploymentSpec(
        name="score-on-demand",
        entrypoint="flows/score.py:score_flow",
        parameters={"batch": "batch_04"},
        description="Batch scoring with models:/<name>@champion.",
        tags=("ml",),
    ),
    DeploymentSpec(
        name="rag-pipeline-nightly",
        entrypoint="flows/rag_pipeline.py:rag_pipeline_flow",
        cron="0 2 * * *",
        description="Incremental ingestion of the corpus into a new index version, golden-set evaluation, "
        "and the gate that moves the live alias. An unchanged corpus embeds nothing.",
        tags=("rag",),
    ),
    DeploymentSpec(
        name="rag-eval-on-demand",
        entrypoint="flows/rag_eval.py:rag_eval_flow",
        description="Re-evaluate an index version (default: the newest build) against the live one and gate the alias.",
        tags=("rag", "evaluation"),
    ),
    DeploymentSpec(
        name="rag-rollback",
        entrypoint="flows/rag_index.py:rag_rollback_flow",
        description="Point the live alias back at the previous live index version (or at parameter `to`).",
        tags=("rag", "operations"),
    ),
    DeploymentSpec(
        name="rag-ask",
        entrypoint="flows/rag_index.py:rag_ask_flow",
        parameters={"question": "When was the Python Software Foundation formed?"},
        description="Answer one question from the live index with citations (extractive unless an LLM endpoint is set).",
        tags=("rag",),
    ),
    DeploymentSpec(
        name="agent-regression-nightly",
        entrypoint="flows/agent_regression.py:agent_regression_flow",
        cron="30 2 * * *",
        description="Replay every golden-trace scenario of the ops agent and diff each run against its golden; "
        "fails when a scenario that passed last time fails now.",
        tags=("agents", "evaluation"),
    ),
    DeploymentSpec(
        name="agent-ask",
        entrypoint="flows/agent.py:agent_ask_flow",
        parameters={"request": "show the index status"},
        description="Ask the ops agent; a risky action pauses the flow run until an operator approves, edits or denies it here.",
        tags=("agents", "operations"),
    ),
]
