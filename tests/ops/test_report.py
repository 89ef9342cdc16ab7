"""The ops report: built from constructed states (empty, healthy, failing), then once from a real trained platform."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest

from opsfabric.ops import report as R
from opsfabric.ops.records import IndexRecord, IndexRegistryRecord, Links, RunRecord, VersionRecord

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def _ms(days_ago: float) -> int:
    return int((NOW - timedelta(days=days_ago)).timestamp() * 1000)


def _run(run_id, experiment, name, days_ago, *, status="FINISHED", tags=None, metrics=None, flow_run="fr-" + "1"):
    tags = {"prefect.flow_run_id": flow_run, "prefect.flow_run_name": "brave-fox", **(tags or {})}
    return RunRecord(run_id, "7", f"opsfabric-{experiment}", name, status, _ms(days_ago), _ms(days_ago) + 2000, tags, metrics or {})


def _state(**overrides) -> R.OpsState:
    values = dict(read_at=NOW, model_name="churn-classifier", champion_alias="champion", gate_metric="roc_auc", drift_threshold=0.3)
    return R.OpsState(**{**values, **overrides})


def _healthy() -> R.OpsState:
    versions = [
        VersionRecord("churn-classifier", "1", "t1", "models:/m-1", _ms(10), {"gate.decision": "promoted", "eval_roc_auc": "0.790000"}),
        VersionRecord("churn-classifier", "2", "t2", "models:/m-2", _ms(2.5), {"gate.decision": "promoted", "eval_roc_auc": "0.810000",
                                                                               "gate.reasons": "candidate better"}, ("champion",)),
    ]
    runs = {
        R.ML_TRAINING: [_run("t2", "ml-training", "retrain-batch_02", 2.5), _run("t1", "ml-training", "train-reference", 10)],
        R.ML_MONITORING: [  # newest first; batch_02 checked twice: the newest verdict counts
            _run("m3", "ml-monitoring", "monitor-batch_02", 1, tags={"opsfabric.batch": "batch_02", "drift.retrain": "False", "opsfabric.champion_version": "2"},
                 metrics={"drift_share": 0.1, "current_roc_auc": 0.8}),
            _run("m2", "ml-monitoring", "monitor-batch_02", 3, tags={"opsfabric.batch": "batch_02", "drift.retrain": "True", "opsfabric.champion_version": "1"},
                 metrics={"drift_share": 0.5}),
            _run("m1", "ml-monitoring", "monitor-batch_01", 4, tags={"opsfabric.batch": "batch_01", "drift.retrain": "False", "opsfabric.champion_version": "1"},
                 metrics={"drift_share": 0.0}),
        ],
        R.RAG_EVAL: [_run("e2", "rag-eval", "eval-docs-v0002", 1, tags={"rag.gate.outcome": "promoted", "rag.collection": "docs-v0002"},
                          metrics={"hit_at_5": 0.95, "mrr": 0.79, "latency_ms": 150.0, "cost_usd": 0.0}),
                     _run("e1", "rag-eval", "eval-docs-v0001", 5, tags={"rag.gate.outcome": "promoted"},
                          metrics={"hit_at_5": 0.9, "mrr": 0.7, "latency_ms": 180.0, "cost_usd": 0.0})],
        R.AGENT_REGRESSION: [_run("a2", "agent-regression", "golden-suite", 1, metrics={"pass_rate": 1.0, "scenarios": 36, "failed": 0,
                                                                                      "suite_seconds": 4.0, "total_cost_usd": 0.0}),
                             _run("a1", "agent-regression", "golden-suite", 3, metrics={"pass_rate": 1.0, "scenarios": 36, "failed": 0,
                                                                                      "suite_seconds": 15.0, "total_cost_usd": 0.0})],
    }
    registry = IndexRegistryRecord("docs-live", (
        IndexRecord("docs-v0001", 1, "retired"),
        IndexRecord("docs-v0002", 2, "live", eval_run_id="e2", built_at="2026-11-25T12:00:00+00:00",
                    eval_scores={"holdout.hit_at_5": 0.93, "holdout.mrr": 0.73, "latency_ms": 150.0}, decision={"reasons": ["holdout.mrr=0.73 >= 0.65"]}),
    ), ("docs-v0001", "docs-v0002"))
    return _state(versions=versions, runs=runs, registry=registry, agent_verdicts={"a2": {"s1": "pass"}},
                  links=Links(mlflow_ui="http://mlflow:5000", prefect_ui="http://prefect:4200"))


@pytest.mark.unit
def test_empty_platform_renders_none_yet_not_errors():
    report = R.build_report(_state())
    assert report.champion is None and report.index is None and report.agents is None and report.drift == [] and report.problems == []
    page = R.render_html(report, R.render_plots(report))
    assert page.count(R.NONE_YET) >= 6  # champion, versions, drift, index, index versions, agents, trends
    assert "Nothing failing." in page and "<img" not in page
    markdown = R.render_markdown(report)
    assert markdown.count(R.NONE_YET) == 4
    assert report.summary() == {"champion_version": None, "champion_age_days": None, "live_index": None, "agent_pass_rate": None,
                                "batches_to_retrain": [], "problems": 0}


@pytest.mark.unit
def test_healthy_platform_names_champion_age_newest_drift_live_index_and_pass_rate():
    report = R.build_report(_healthy())
    assert report.champion.version == "2" and report.champion.age_days == pytest.approx(2.5)
    assert report.champion.run.url == "http://mlflow:5000/#/experiments/7/runs/t2"
    assert report.champion.flow_run.url == "http://prefect:4200/runs/flow-run/fr-1"
    assert [(d.batch, d.retrain, d.champion_version) for d in report.drift] == [("batch_01", False, "1"), ("batch_02", False, "2")]
    assert report.index.collection == "docs-v0002" and report.index.eval_run.id == "e2" and report.index.scores["holdout.mrr"] == 0.73
    assert report.agents.pass_rate == 1.0 and report.agents.failing == []
    assert report.problems == []
    pass_rate = report.trends["Agent golden-trace pass rate"][0]
    assert [v for _, v in pass_rate.points] == [1.0, 1.0]  # oldest first
    latency = {s.name: [v for _, v in s.points] for s in report.trends["Latency"]}
    assert latency["RAG answer latency"] == [180.0, 150.0] and latency["agent suite"] == [15.0, 4.0] and latency["training run"] == [2.0, 2.0]
    page = R.render_html(report)
    assert "churn-classifier v2" in page and 'href="http://mlflow:5000/#/experiments/7/runs/t2"' in page and "docs-v0002" in page


@pytest.mark.unit
def test_failures_gates_that_said_no_and_regressions_are_listed_with_links():
    state = _healthy()
    state.runs[R.ML_TRAINING].insert(0, _run("t3", "ml-training", "retrain-batch_03", 0.5, status="FAILED"))
    state.runs[R.ML_MONITORING].insert(0, _run("m4", "ml-monitoring", "monitor-batch_04", 0.4, status="KILLED"))
    state.runs[R.RAG_EVAL].insert(0, _run("e3", "rag-eval", "eval-docs-v0003", 0.3, tags={"rag.gate.outcome": "rejected", "rag.collection": "docs-v0003"}))
    state.runs[R.AGENT_REGRESSION].insert(0, _run("a3", "agent-regression", "golden-suite", 0.2, metrics={"pass_rate": 34 / 36, "scenarios": 36, "failed": 2}))
    state.runs[R.ML_TRAINING].append(_run("t0", "ml-training", "too-old", 60, status="FAILED"))  # outside the 30-day window
    state.agent_verdicts = {"a3": {"drift_latest": "fail", "promote_denied": "schema_drift", "s1": "pass"}}
    state.versions.append(VersionRecord("churn-classifier", "3", "t4", "models:/m-3", _ms(0.1), {"gate.decision": "rejected",
                                                                                                  "gate.reasons": "candidate roc_auc=0.70 below floor"}))
    state.registry = IndexRegistryRecord("docs-live", (*state.registry.versions, IndexRecord("docs-v0004", 4, "failed", created_at="2026-11-26T11:00:00")),
                                         state.registry.live_history)
    report = R.build_report(state, since_days=30)
    whats = [p.what for p in report.problems]
    assert any("retrain-batch_03 failed" in w for w in whats)
    assert any("monitor-batch_04 killed" in w for w in whats)
    assert any("index gate said no to docs-v0003: rejected" in w for w in whats)
    assert any(w.startswith("2 golden-trace scenario(s) failed: drift_latest, promote_denied") for w in whats)
    assert any("model gate said no to churn-classifier v3: candidate roc_auc=0.70 below floor" in w for w in whats)
    assert any("index build docs-v0004 failed" in w for w in whats)
    assert not any("too-old" in w for w in whats)
    assert report.agents.failing == ["drift_latest", "promote_denied"] and report.summary()["problems"] == len(whats) == 6
    failed = next(p for p in report.problems if "retrain-batch_03" in p.what)
    assert failed.link.url.endswith("/runs/t3") and failed.flow_run.id == "fr-1"
    markdown = R.render_markdown(report)
    assert "Nothing failing" not in markdown and "[ml-training" not in markdown and "(http://mlflow:5000/#/experiments/7/runs/t3)" in markdown


@pytest.mark.unit
def test_without_ui_urls_the_report_shows_ids():
    state = _healthy()
    state.links = Links()
    report = R.build_report(state)
    assert report.champion.run.url is None and report.champion.run.id == "t2"
    page = R.render_html(report)
    assert "<code>t2</code>" in page and "href" not in page and "make mlflow-ui" in page


@pytest.mark.unit
def test_plots_are_png_images_one_per_trend_with_data():
    report = R.build_report(_healthy())
    plots = R.render_plots(report)
    assert set(plots) == {"Drift per batch", "Agent golden-trace pass rate", "RAG evaluation (holdout + all questions)", "Latency", "Cost"}
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for png in plots.values())
    assert R.render_html(report, plots).count("data:image/png;base64,") == 5


# ---- the real thing ----------------------------------------------------------------------------------
def _markdown_artifact(key: str) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1,
                                      sort="CREATED_DESC")
    return found[0].data if found else None


@pytest.mark.flows
def test_ops_report_flow_on_an_empty_then_a_trained_platform(empty_platform, trained_platform):
    import mlflow.artifacts

    from flows.ops_report import ops_report_flow
    from opsfabric import tracking
    from opsfabric.settings import load_settings

    empty = ops_report_flow(empty_platform)
    assert empty["champion_version"] is None and empty["live_index"] is None and empty["agent_pass_rate"] is None
    empty_client = tracking.mlflow_client(load_settings(*empty_platform))
    assert "Champion: <em>none yet</em>" in mlflow.artifacts.load_text(empty_client.get_run(empty["mlflow_run_id"]).info.artifact_uri + "/ops_report.html")

    config_files, settings, trained = trained_platform
    summary = ops_report_flow(config_files)
    client = tracking.mlflow_client(settings)
    champion = client.get_model_version_by_alias(settings.ml.registered_model, settings.ml.champion_alias)
    assert trained["promoted"] and summary["champion_version"] == str(champion.version) == trained["version"]
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and client.get_experiment(run.info.experiment_id).name == "opsfabric-ops-report"
    page = mlflow.artifacts.load_text(run.info.artifact_uri + "/ops_report.html")
    assert f"churn-classifier v{champion.version}</b>" in page and trained["run_id"] in page
    markdown = _markdown_artifact("ops-report")
    assert markdown is not None and f"churn-classifier v{champion.version}" in markdown and summary["mlflow_run_id"] in markdown


@pytest.mark.unit
def test_the_agent_section_names_the_model_that_decided():
    from opsfabric.agents.agent import build_trace, make_model
    from opsfabric.agents.settings import OfflinePlannerSettings
    from opsfabric.agents.tracing import model_tags

    # the tags a real planner run writes (regression.log_suite: opsfabric.agent.model + the trace's model tags)
    trace = build_trace([], profile="operator", thread_id="t", model_name="offline-planner", status="completed", stop_reason=None,
                        answer="", labels=make_model(OfflinePlannerSettings()).labels)
    planner_tags = {"opsfabric.agent.model": "offline", **model_tags(trace)}
    assert planner_tags["gen_ai.request.model"] == "offline-planner"
    planner = _state(runs={R.AGENT_REGRESSION: [_run("a1", "agent-regression", "golden-suite", 1, tags=planner_tags,
                                                     metrics={"pass_rate": 1.0, "scenarios": 36, "failed": 0})]})
    assert "decided by offline planner (deterministic, not a language model)" in R.render_markdown(R.build_report(planner))
    tags = {"opsfabric.agent.model": "openai", "gen_ai.request.model": "smollm2-135m-instruct", "opsfabric.model.file": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "opsfabric.model.sha256": "b179c9523d0e6a0f98a3", "opsfabric.server": "llama-cpp-python 0.3.36",
            "gen_ai.request.temperature": "0.0", "gen_ai.request.seed": "0"}
    model = _state(runs={R.AGENT_REGRESSION: [_run("a2", "agent-regression", "golden-suite", 1, tags=tags,
                                                   metrics={"pass_rate": 0.25, "scenarios": 36, "failed": 27})]})
    report = R.build_report(model)
    expected = "smollm2-135m-instruct (SmolLM2-135M-Instruct.Q4_1.gguf sha256:b179c952…, llama-cpp-python 0.3.36, T=0.0, seed 0)"
    assert expected in R.render_markdown(report) and expected in R.render_html(report, {})


@pytest.mark.unit
def test_the_index_section_names_what_wrote_the_evaluated_answers():
    generated = R._answers_by({"rag.answer.model": "smollm2-135m-instruct", "rag.answer.model_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                               "rag.answer.model_sha256": "b179c9523d0e", "rag.answer.server": "llama-cpp-python 0.3.36 at http://127.0.0.1:8089/v1"})
    assert generated == "smollm2-135m-instruct (SmolLM2-135M-Instruct.Q4_1.gguf sha256:b179c952…, llama-cpp-python 0.3.36 at http://127.0.0.1:8089/v1)"
    extractive = "none: extractive answers (retrieved sentences, no language model)"
    assert R._answers_by({"rag.answer.model": extractive}) == extractive
