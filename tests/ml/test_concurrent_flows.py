"""Two real ``python -m flows.train`` processes started together on an empty state folder both succeed.

Both create the MLflow store (under the store lock), both train, both gate (under the registry
lock, with compare-and-set): one version is promoted, the other is judged against it and rejected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from opsfabric import tracking
from opsfabric.settings import PROJECT_ROOT, load_settings
from tests.ml.registry_support import registry_problems

pytestmark = pytest.mark.flows


def test_two_train_flows_on_an_empty_state_folder_both_succeed(prefect_api, ml_overlay):
    from prefect.settings import PREFECT_API_URL

    config_files = ml_overlay()
    settings = load_settings(*config_files)
    assert not settings.state_dir.exists()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OPSFABRIC_CONFIG": config_files[0]}
    children = [
        subprocess.Popen([sys.executable, "-m", "flows.train"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=240) for child in children]
    for child, (_, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr[-4000:]
    results = [json.loads(stdout[stdout.index("{") :]) for stdout, _ in outputs]

    promoted = [r for r in results if r["promoted"]]
    rejected = [r for r in results if not r["promoted"]]
    assert len(promoted) == 1 and len(rejected) == 1, results
    # the rejected one was judged against the promoted one (same data, same seed: no improvement)
    assert rejected[0]["previous_champion"] == promoted[0]["version"] and rejected[0]["champion_score"] == promoted[0]["candidate_score"]
    client = tracking.mlflow_client(settings)
    assert registry_problems(client, settings.ml.registered_model, settings.ml.champion_alias) == []
    experiment = client.get_experiment_by_name(f"{settings.tracking.experiment_prefix}-ml-training")
    assert sorted(r.info.status for r in client.search_runs([experiment.experiment_id])) == ["FINISHED", "FINISHED"]
