"""The regression flow on a real Prefect API and a real MLflow SQLite store (tmp state)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from opsfabric.agents.regression import EXPERIMENT, RegressionError
from opsfabric.settings import PROJECT_ROOT

GOLDEN = PROJECT_ROOT / "data" / "golden" / "agent"
SUBSET = ["compare_2_3", "drift_then_retrain_approved", "abstain_ambiguous", "injection_then_risky_refused"]


@pytest.fixture
def subset_overlay(tmp_path):
    """A copy of the SUBSET goldens and an overlay pointing the suite at them, with state under tmp_path."""
    golden = tmp_path / "golden"
    golden.mkdir()
    for sid in SUBSET:
        shutil.copy(GOLDEN / f"{sid}.yaml", golden)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "agents": {"golden_dir": str(golden)}}))
    return overlay, golden


@pytest.mark.flows
def test_flow_logs_results_and_fails_when_a_passing_scenario_regresses(prefect_api, tmp_path, subset_overlay):
    from flows.agent_regression import agent_regression_flow
    from opsfabric.settings import load_settings
    from opsfabric.tracking import mlflow_client

    overlay, golden = subset_overlay

    first = agent_regression_flow(config_files=[str(overlay)])
    assert first["pass_rate"] == 1.0 and set(first["verdicts"]) == set(SUBSET)
    settings = load_settings(overlay)
    client = mlflow_client(settings)
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.metrics["pass_rate"] == 1.0 and "latency_s.compare_2_3" in run.data.metrics
    assert client.get_experiment(run.info.experiment_id).name.endswith(EXPERIMENT)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"verdicts.json", "diffs", "traces"} <= artifacts

    # the golden now expects other arguments: the agent did not change, but the scenario that
    # passed last time fails now, and the flow run fails naming it and the first divergence
    path = golden / "compare_2_3.yaml"
    data = yaml.safe_load(path.read_text())
    data["expect"]["trajectory"]["calls"][0]["args"]["version_b"] = 4
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    baselines = list((tmp_path / "state" / "agents" / "regression" / "baselines").glob("*.json"))
    assert len(baselines) == 1  # one baseline, for this configuration identity (the offline planner)
    baseline = baselines[0].read_text()
    assert '"model": "offline-planner"' in baseline
    for _ in range(3):  # not once: every run fails until the agent is fixed or the golden re-approved
        with pytest.raises(RegressionError, match=r"compare_2_3") as err:
            agent_regression_flow(config_files=[str(overlay)])
        assert "deterministic model: passed in the baseline (1/1), fails now (0/1)" in str(err.value)
        assert "first divergence: expected step 0, actual step 0: changed" in str(err.value)
        assert "argument version_b: 3 != expected 4" in str(err.value)
        assert baselines[0].read_text() == baseline  # a failing run is no baseline


@pytest.mark.unit
def test_a_baseline_is_kept_per_configuration_identity(tmp_path):
    # the planner with other thresholds is another identity: it never inherits this baseline
    from opsfabric.agents import regression
    from opsfabric.agents.settings import AgentsSettings

    planner = regression.suite_identity(AgentsSettings())
    assert planner["model"] == "offline-planner"
    assert regression.identity_key(planner) == regression.identity_key(regression.suite_identity(AgentsSettings()))
    tuned = regression.suite_identity(AgentsSettings(model={"kind": "offline", "min_similarity": 0.5}))
    assert regression.identity_key(tuned) != regression.identity_key(planner)
    folder = tmp_path / "regression"
    assert regression.baseline_path(folder, planner).parent == folder / "baselines"


@pytest.mark.flows
def test_dvc_stage_writes_metrics_and_diffs_and_fails_on_a_failing_scenario(tmp_path):
    from opsfabric.agents.stages import stage_regression
    from opsfabric.settings import load_settings

    golden = tmp_path / "golden"
    golden.mkdir()
    for sid in SUBSET[:2]:
        shutil.copy(GOLDEN / f"{sid}.yaml", golden)
    agents = {"golden_dir": str(golden), "metrics_path": str(tmp_path / "m.json"), "report_dir": str(tmp_path / "r")}
    settings = load_settings(state_dir=tmp_path / "state", agents=agents)
    assert stage_regression(settings) == 0
    import json

    assert json.loads((tmp_path / "m.json").read_text())["pass_rate"] == 1.0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted([f"{s}.txt" for s in SUBSET[:2]] + ["verdicts.json"])
    path = golden / "compare_2_3.yaml"
    path.write_text(path.read_text().replace("version_b: 3", "version_b: 4"))
    assert stage_regression(settings) == 1
    assert "argument version_b: 3 != expected 4" in (tmp_path / "r" / "compare_2_3.txt").read_text()


@pytest.mark.flows
def test_compare_runs_both_sides_on_the_same_scenarios_and_logs_a_parent_and_two_children(prefect_api, tmp_path, subset_overlay):
    from flows.agent_regression import agent_compare_flow
    from opsfabric.settings import load_settings
    from opsfabric.tracking import mlflow_client

    base, _ = subset_overlay
    strict = tmp_path / "strict.yaml"  # a planner that abstains on almost everything: B must come out worse
    strict.write_text(yaml.safe_dump({"agents": {"model": {"kind": "offline", "min_similarity": 0.95, "min_similarity_risky": 0.95}}}))
    result = agent_compare_flow(str(base), f"{base},{strict}", trials=1, seed=0)
    table = {row["scenario"]: row for row in result["table"]}
    assert set(table) == set(SUBSET) and result["pass_rate_a"] == 1.0 and result["pass_rate_b"] < 1.0
    assert table["compare_2_3"]["B vs A"] == "worse" and all(row["B vs A"] in ("worse", "same") for row in table.values())
    assert result["effect"] < 0 and 0 < result["mcnemar_p"] <= 1
    client = mlflow_client(load_settings(base))
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["opsfabric.compare.side"] for c in children) == ["a", "b"]
    assert {c.data.tags["opsfabric.compare.side"]: c.data.metrics["pass_rate"] for c in children}["a"] == 1.0
