"""Ops tasks: trace lineage, collect and publish the ops report; the Prefect side of both (UI links, flow-run lookup)."""

from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from opsfabric.ops import report as ops_report
from opsfabric.ops.lineage import LineageResult, render_tree
from opsfabric.ops.queries import read_ops_state, trace_ref
from opsfabric.ops.records import FlowRunLookup, Links, mlflow_ui_from_tracking_uri
from opsfabric.settings import Settings
from tasks.common import current_lineage

REPORT_ARTIFACT = "ops_report.html"


# ---- Prefect as a source of links and flow-run details ------------------------------------------------
def prefect_api_available() -> bool:
    """A Prefect API can be asked without starting one: ``PREFECT_API_URL`` is set, or this is a flow run."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value()) or FlowRunContext.get() is not None


def ui_links(settings: Settings) -> Links:
    """MLflow UI: the tracking server (an embedded store has none); Prefect UI: ``PREFECT_UI_URL`` when a server is configured."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    prefect_ui = PREFECT_UI_URL.value() if PREFECT_API_URL.value() else None
    return Links(mlflow_ui=mlflow_ui_from_tracking_uri(settings.tracking_uri), prefect_ui=prefect_ui or None)


def prefect_flow_run_lookup() -> FlowRunLookup | None:
    """A function that asks the Prefect API about a flow run (state, flow, deployment, parent), or None without an API.

    A subflow (the ML pipeline inside ``make run``'s platform flow) has no deployment of its own: the
    deployment of its root flow run is reported, walking up at most five parents.
    """
    if not prefect_api_available():
        return None

    def lookup(flow_run_id: str) -> dict[str, Any] | None:
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                run = client.read_flow_run(UUID(flow_run_id))
            except ObjectNotFound:
                return None
            info: dict[str, Any] = {
                "name": run.name,
                "flow_name": client.read_flow(run.flow_id).name,
                "state": run.state_name,
                "start_time": str(run.start_time) if run.start_time else None,
                "deployment_id": str(run.deployment_id) if run.deployment_id else None,
            }
            current = run
            for _ in range(5):
                if current.deployment_id or not current.parent_task_run_id:
                    break
                parent_id = client.read_task_run(current.parent_task_run_id).flow_run_id
                info.setdefault("parent_flow_run_id", str(parent_id))
                current = client.read_flow_run(parent_id)
            if current.deployment_id:
                info["deployment_id"] = str(current.deployment_id)
                info["deployment_name"] = client.read_deployment(current.deployment_id).name
            return info

    return lookup


# ---- lineage ---------------------------------------------------------------------------------------
@task(name="trace-lineage", cache_policy=NO_CACHE)
def trace_lineage(settings: Settings, ref: str) -> LineageResult:
    """Walk the lineage of ``ref`` (MLflow tags, dvc.lock at the recorded commit, the Prefect API for details)."""
    return trace_ref(settings, ref, flow_run_lookup=prefect_flow_run_lookup(), links=ui_links(settings))


@task(name="publish-lineage", cache_policy=NO_CACHE)
def publish_lineage(result: LineageResult) -> None:
    """The tree as a Prefect markdown artifact (key ``lineage``)."""
    create_markdown_artifact(f"# Lineage of `{result.ref}`\n\n```\n{render_tree(result.root)}\n```\n", key="lineage",
                             description=f"Where {result.ref} came from ({result.direction})")


# ---- ops report ------------------------------------------------------------------------------------
@task(name="collect-ops-state", cache_policy=NO_CACHE)
def collect_ops_state(settings: Settings) -> ops_report.OpsState:
    """Runs of every OpsFabric experiment, model versions, the index registry, the newest agent verdicts."""
    return read_ops_state(settings, links=ui_links(settings))


@task(name="build-ops-report", cache_policy=NO_CACHE)
def build_ops_report(state: ops_report.OpsState, since_days: float) -> tuple[ops_report.OpsReport, str]:
    """The report model and its HTML page (plots embedded)."""
    report = ops_report.build_report(state, since_days=since_days)
    get_run_logger().info("ops report: %s", json.dumps(report.summary(), default=str))
    return report, ops_report.render_html(report, ops_report.render_plots(report))


@task(name="log-ops-report", cache_policy=NO_CACHE)
def log_ops_report(settings: Settings, report: ops_report.OpsReport, page: str) -> str:
    """One run in experiment ``ops-report``: the page as artifact ``ops_report.html``, headline numbers as metrics and tags."""
    from opsfabric import tracking

    summary = report.summary()
    tags = {"ops.champion_version": str(summary["champion_version"]), "ops.live_index": str(summary["live_index"])}
    with tracking.mlflow_run(settings, ops_report.OPS_REPORT, "ops-report", current_lineage(settings, []), tags=tags) as run:
        run.client.log_text(run.run_id, page, REPORT_ARTIFACT)
        run.client.log_dict(run.run_id, summary, "ops_report.json")
        run.client.log_metric(run.run_id, "problems", float(summary["problems"]))
        for key in ("agent_pass_rate", "champion_age_days"):
            if summary[key] is not None:
                run.client.log_metric(run.run_id, key, float(summary[key]))
        return run.run_id


@task(name="publish-ops-report", cache_policy=NO_CACHE)
def publish_ops_report(settings: Settings, report: ops_report.OpsReport, run_id: str) -> None:
    """The short version as a Prefect markdown artifact (key ``ops-report``), pointing at the HTML in MLflow."""
    from opsfabric import tracking

    artifact_uri = tracking.mlflow_client(settings).get_run(run_id).info.artifact_uri
    where = f"MLflow run `{run_id}`, artifact `{REPORT_ARTIFACT}` ({artifact_uri}/{REPORT_ARTIFACT})"
    create_markdown_artifact(ops_report.render_markdown(report, where), key="ops-report",
                             description="OpsFabric across ML, RAG and agents: champion, drift, live index, regression, problems")
