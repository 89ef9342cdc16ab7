"""The ML flows on a real Prefect API, a real MLflow SQLite store and real Evidently reports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from opsfabric import tracking
from opsfabric.ml.errors import DataLoadError, DataValidationError, RegistrationError
from opsfabric.ml.registry import get_champion
from opsfabric.settings import load_settings
from tests.ml.registry_support import list_versions

pytestmark = pytest.mark.flows


def _registry(config_files):
    settings = load_settings(*config_files)
    client = tracking.mlflow_client(settings)
    champion = get_champion(client, settings.ml.registered_model, settings.ml.champion_alias)
    return settings, client, list_versions(client, settings.ml.registered_model), champion.version if champion else None


# ------------------------------------------------------------------------------------------------
# The whole lifecycle, run once for the module
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline_run(prefect_api, churn_dir, tmp_path_factory):
    from flows.ml_pipeline import ml_pipeline_flow

    tmp = tmp_path_factory.mktemp("pipeline")
    base = yaml.safe_load((Path(__file__).parents[2] / "configs/base.yaml").read_text())["dataset"]
    base.update(
        data_dir=str(churn_dir),
        reference=str(churn_dir / "reference.parquet"),
        batches=[str(churn_dir / f"batch_0{i}.parquet") for i in range(1, 5)],
    )
    overlay = tmp / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump({"state_dir": str(tmp / "state"), "dataset": base, "ml": {"train": {"model": {"hyperparameters": {"n_estimators": 60}}}}})
    )
    config_files = [str(overlay)]
    return config_files, ml_pipeline_flow(config_files)


def test_pipeline_registers_a_champion_with_lineage(pipeline_run):
    config_files, result = pipeline_run
    settings, client, versions, champion = _registry(config_files)
    assert result["train"]["promoted"] and champion is not None
    first = client.get_model_version(settings.ml.registered_model, "1")
    run = client.get_run(first.run_id)
    assert {"eval_accuracy", "eval_f1", "eval_roc_auc"} <= set(run.data.metrics)
    assert run.data.params["model_kind"] == "gradient_boosting" and run.data.params["model__n_estimators"] == "60"
    tags = run.data.tags
    assert tags["prefect.flow_run_id"] and tags["opsfabric.git_commit"]
    assert len(tags["dvc.md5.reference"]) == 32
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "data")}
    assert "data/eval_set.parquet" in artifacts
    # Lineage the MLflow way: train and eval rows as dataset inputs, each with the file's DVC md5.
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"reference-train", "reference-evaluation"}
    assert {i["dvc.md5"] for i in inputs.values()} == {tags["dvc.md5.reference"]}
    assert inputs["reference-evaluation"]["mlflow.data.context"] == "evaluation"
    # The decision threshold is recorded with the model: a run param and a version tag.
    assert run.data.params["decision_threshold"] == "0.5" and first.tags["decision_threshold"] == "0.5"
    assert first.tags["gate.decision"] == "promoted" and run.data.tags["gate.version"] == "1"
    model_info = mlflow.models.get_model_info(f"models:/{settings.ml.registered_model}/1")
    assert model_info.signature is not None and "contract" in str(model_info.signature.inputs)


def test_pipeline_monitors_every_batch_and_retrains_through_the_gate(pipeline_run):
    config_files, result = pipeline_run
    settings, client, versions, champion = _registry(config_files)
    by_batch = {m["batch"]: m for m in result["monitor"]}
    assert list(by_batch) == ["batch_01", "batch_02", "batch_03", "batch_04"]
    assert not by_batch["batch_01"]["retrain"], by_batch["batch_01"]["reasons"]
    assert by_batch["batch_02"]["drifted_features"], "covariate drift batch must show drifted features"
    assert by_batch["batch_03"]["retrain"] and any("performance drop" in r for r in by_batch["batch_03"]["reasons"])
    retrains = [m["retrain_result"] for m in result["monitor"] if m.get("retrain_result")]
    assert retrains and any(r["promoted"] for r in retrains)
    for m in result["monitor"]:
        run = client.get_run(m["mlflow_run_id"])
        assert run.data.metrics["drift_share"] == pytest.approx(m["drift_share"])
        monitored = {i.dataset.name: {t.key: t.value for t in i.tags} for i in run.inputs.dataset_inputs}
        assert monitored[m["batch"]]["mlflow.data.context"] == "monitoring"
        assert monitored[m["batch"]]["dvc.md5"] == run.data.tags[f"dvc.md5.{m['batch']}"]
        logged = {a.path for a in client.list_artifacts(m["mlflow_run_id"], "evidently")}
        assert f"evidently/{m['batch']}.html" in logged
        assert Path(m["report_html"]).read_text().count("<html") >= 1
    # the champion moved to the last promoted retrain, and gate decisions sit on each version
    promoted = [r for r in retrains if r["promoted"]][-1]
    assert champion == promoted["version"]
    for version in versions:
        tags = client.get_model_version(settings.ml.registered_model, version).tags
        assert tags["gate.decision"] in {"promoted", "rejected"}, (version, tags["gate.decision"])
    # every monitored batch names the champion that was live when it was monitored
    assert by_batch["batch_04"]["champion_version"] == champion


def test_pipeline_scores_the_last_batch_with_the_champion(pipeline_run, churn_dir):
    from opsfabric.ml.champion import load_champion
    from opsfabric.ml.contract import load_contract
    from opsfabric.ml.model import positive_scores

    config_files, result = pipeline_run
    settings = load_settings(*config_files)
    champion = load_champion(settings)
    scored = pd.read_parquet(result["scored"])
    batch = pd.read_parquet(churn_dir / "batch_04.parquet")
    expected = positive_scores(champion.model, batch, load_contract(settings).spec)
    assert np.allclose(scored["prediction_proba"].to_numpy(), expected)
    assert (scored["prediction"] == (scored["prediction_proba"] >= champion.decision_threshold).astype(int)).all()
    assert len(scored) == len(batch) and scored["prediction"].nunique() == 2


def test_champion_serves_with_mlflow_models_serve(pipeline_run, churn_dir):
    config_files, _ = pipeline_run
    settings = load_settings(*config_files)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    venv_bin = Path(sys.executable).parent  # as with an activated venv: the server shells out to uvicorn
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MLFLOW_REGISTRY_URI": settings.registry_uri,
    }
    mlflow_cli = venv_bin / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", f"models:/{settings.ml.registered_model}@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        rows = pd.read_parquet(churn_dir / "batch_04.parquet").head(3)
        features = rows.drop(columns=["customer_id", "snapshot_date", "churned"])
        body = json.dumps({"dataframe_split": json.loads(features.to_json(orient="split", index=False))}).encode()
        deadline = time.monotonic() + 90
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    predictions = json.loads(response.read())["predictions"]
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow models serve did not answer: {server.stderr.read().decode()[-2000:]}")
                time.sleep(1)
        probabilities = np.asarray(predictions)
        assert probabilities.shape == (3, 2) and np.allclose(probabilities.sum(axis=1), 1.0)
    finally:
        server.terminate()
        server.wait(timeout=20)


# ------------------------------------------------------------------------------------------------
# Failures: nothing is lost, nothing half-done
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def trained_registry(prefect_api, ml_overlay):
    """A registry with a champion (version 1), trained on the session's churn data."""
    from flows.train import train_flow

    config_files = ml_overlay()
    train_flow(config_files)
    return config_files


def _corrupt(path: Path, how: str) -> None:
    frame = pd.read_parquet(path)
    if how == "missing column":
        frame = frame.drop(columns=["support_calls"])
    elif how == "wrong dtype":
        frame["tenure_months"] = frame["tenure_months"].astype(str).where(frame.index != 11, "ten")
    elif how == "all-NaN column":
        frame["age"] = np.nan
    elif how == "unknown category":
        frame.loc[5, "internet_service"] = "satellite"
    elif how == "label missing":
        frame.loc[[0, 1], "churned"] = np.nan
    if how == "empty file":
        path.write_bytes(b"")
    elif how == "corrupt file":
        path.write_bytes(b"\x00\x01garbage" * 10)
    else:
        frame.to_parquet(path, index=False)


BAD_INPUTS = {
    "missing column": (DataValidationError, ["'support_calls'", "required_column"]),
    "wrong dtype": (DataValidationError, ["'tenure_months'", "dtype", "'ten'", "rows 11"]),
    "all-NaN column": (DataValidationError, ["'age'", "all_missing"]),
    "unknown category": (DataValidationError, ["'internet_service'", "satellite"]),
    "label missing": (DataValidationError, ["'churned'", "label_present", "rows 0, 1"]),
    "empty file": (DataLoadError, ["file is empty"]),
    "corrupt file": (DataLoadError, ["cannot be read as parquet"]),
}


def test_bad_batches_stop_retraining_and_leave_the_registry_alone(trained_registry, copy_churn, ml_overlay):
    from flows.retrain import retrain_flow

    data_dir = copy_churn()
    config_files = ml_overlay(data_dir=data_dir)
    pristine = (data_dir / "batch_03.parquet").read_bytes()
    _, _, versions_before, champion_before = _registry(trained_registry)
    for how, (error, fragments) in BAD_INPUTS.items():
        (data_dir / "batch_03.parquet").write_bytes(pristine)
        _corrupt(data_dir / "batch_03.parquet", how)
        with pytest.raises(error) as info:
            retrain_flow(["batch_03"], "test", config_files)
        message = str(info.value)
        assert "batch_03.parquet" in message, how
        for fragment in fragments:
            assert fragment in message, f"{how}: {fragment!r} not in {message!r}"
        _, _, versions, champion = _registry(config_files)
        assert versions == versions_before and champion == champion_before, how


def test_registration_failure_rolls_back_and_a_transient_one_is_retried(trained_registry, monkeypatch):
    from mlflow import MlflowClient

    from flows.retrain import retrain_flow

    settings, client, versions_before, champion_before = _registry(trained_registry)
    real_set_alias = MlflowClient.set_registered_model_alias
    calls = {"n": 0}

    def always_fails(self, name, alias, version):
        if version != champion_before:  # restoring the old alias during roll back must still work
            calls["n"] += 1
            raise RuntimeError("registry unavailable")
        return real_set_alias(self, name, alias, version)

    # Lower the bar so the retrain candidate is promoted and the alias call happens.
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", always_fails)
    overlay = yaml.safe_load(Path(trained_registry[0]).read_text())
    overlay["ml"]["gate"] = {"min_improvement": -1.0, "floor": 0.0}
    Path(trained_registry[0]).write_text(yaml.safe_dump(overlay))
    with pytest.raises(RegistrationError, match="rolled back"):
        retrain_flow(["batch_03"], "test", trained_registry)
    assert calls["n"] == 3  # first try + 2 Prefect retries
    _, _, versions, champion = _registry(trained_registry)
    assert versions == versions_before and champion == champion_before

    def fails_once(self, name, alias, version):
        if calls["n"] == 3:
            calls["n"] += 1
            raise RuntimeError("registry blip")
        return real_set_alias(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fails_once)
    result = retrain_flow(["batch_03"], "test", trained_registry)
    _, _, versions, champion = _registry(trained_registry)
    assert result["promoted"] and len(versions) == len(versions_before) + 1
    assert champion == result["version"] == versions[-1]


def test_training_failure_registers_nothing_and_marks_the_run_failed(prefect_api, ml_overlay, monkeypatch):
    from flows.train import train_flow
    from opsfabric.ml import model

    config_files = ml_overlay()

    def broken_fit(*args, **kwargs):
        raise MemoryError("out of memory halfway through boosting")

    monkeypatch.setattr(model, "fit_model", broken_fit)
    with pytest.raises(MemoryError):
        train_flow(config_files)
    settings, client, versions, champion = _registry(config_files)
    assert versions == [] and champion is None
    experiment = client.get_experiment_by_name(f"{settings.tracking.experiment_prefix}-ml-training")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_second_dataset_by_configuration_alone(prefect_api, tmp_path):
    """scikit-learn's bundled breast cancer CSV: features inferred, no code change."""
    from flows.monitor import monitor_flow
    from flows.train import train_flow

    data_dir = tmp_path / "bc"
    overlay = tmp_path / "bc.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "dataset": {
                    **yaml.safe_load(Path("configs/datasets/breast_cancer.yaml").read_text())["dataset"],
                    "data_dir": str(data_dir),
                    "reference": str(data_dir / "reference.csv"),
                    "batches": [str(data_dir / "batch_01.csv")],
                },
            }
        )
    )
    config_files = ["configs/datasets/breast_cancer.yaml", str(overlay)]
    result = train_flow(config_files)
    assert result["promoted"] and result["candidate_score"] > 0.95
    monitored = monitor_flow("batch_01", config_files, retrain_on_drift=False)
    # batch_01 is a random 30% of the same data: no drift, no performance drop
    assert monitored["champion_version"] == "1" and monitored["drift_share"] < 0.3 and not monitored["retrain"], monitored["reasons"]
