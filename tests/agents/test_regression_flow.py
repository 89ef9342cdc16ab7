"""The regression flow on a real Prefect API and a real MLflow SQLite store (tmp state)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from opsfabric.agents.regression import EXPERIMENT, RegressionError
from opsfabric.settings import PROJECT_ROOT

GOLDEN = PROJECT_ROOT / "data" / "golden" / "agent"
SUBSET = ["compare_2_3", "drift_then_retrain_approved", "abstain_ambiguous", "injection_then_risky_refused"]


@pytest.mark.flows
def test_flow_logs_results_and_fails_when_a_passing_scenario_regresses(prefect_api, tmp_path, monkeypatch):
    from flows.agent_regression import agent_regression_flow
    from opsfabric.settings import load_settings
    from opsfabric.tracking import mlflow_client

    golden = tmp_path / "golden"
    golden.mkdir()
    for sid in SUBSET:
        shutil.copy(GOLDEN / f"{sid}.yaml", golden)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "agents": {"golden_dir": str(golden)}}))

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
    baseline = (tmp_path / "state" / "agents" / "regression" / "verdicts.json").read_text()
    for _ in range(3):  # not once: every run fails until the agent is fixed or the golden re-approved
        with pytest.raises(RegressionError, match=r"compare_2_3") as err:
            agent_regression_flow(config_files=[str(overlay)])
        assert "first divergence: expected step 0, actual step 0: changed" in str(err.value)
        assert "argument version_b: 3 != expected 4" in str(err.value)
        assert (tmp_path / "state" / "agents" / "regression" / "verdicts.json").read_text() == baseline  # a failing run is no baseline


@pytest.mark.unit
def test_gate_fails_new_and_unbaselined_failures_and_regressions():
    from opsfabric.agents.regression import SuiteReport, check_regressions

    def report(statuses):
        return SuiteReport([], statuses, {s: f"diff of {s}" for s in statuses}, {}, 0.0)

    check_regressions({}, report({"a": "pass"}))  # first run, all pass
    with pytest.raises(RegressionError, match=r"without a baseline verdict do not pass: b"):
        check_regressions({}, report({"a": "pass", "b": "fail"}))  # first run: no free pass
    with pytest.raises(RegressionError, match=r"without a baseline verdict do not pass: c"):
        check_regressions({"a": "pass"}, report({"a": "pass", "c": "schema_drift"}))  # a new scenario
    with pytest.raises(RegressionError, match=r"passed in the baseline and fail now: a"):
        check_regressions({"a": "pass"}, report({"a": "fail"}))


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
