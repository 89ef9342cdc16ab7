"""`dvc repro` on a copy of the repository: runs, is a no-op the second time, reruns only what a param touches."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsfabric.ml import stages
from opsfabric.rag import stages as rag_stages
from opsfabric.settings import PROJECT_ROOT

pytestmark = pytest.mark.dvc


def _stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> tuple[Path, dict]:
    """The repository's tracked and unignored files in a fresh git repo, with small params."""
    target = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in listed:
        source = PROJECT_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["ml"]["generate"].update(reference_rows=1200, batch_rows=700)
    params["ml"]["train"]["model"]["hyperparameters"]["n_estimators"] = 40
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (target / "dvc.lock").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSFABRIC_", "PREFECT_HOME", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        _run(cmd, target, env)
    return target, env


def test_repro_runs_every_stage_then_is_a_no_op(repo_copy):
    repo, env = repo_copy
    first = _run(["dvc", "repro"], repo, env)
    for stage in ("generate", "validate", "train", "evaluate", "monitor", "rag_golden", "rag_ingest", "rag_evaluate"):
        assert f"Running stage '{stage}'" in first
    assert (repo / stages.MODEL_DIR / "MLmodel").exists()
    assert (repo / stages.DRIFT_DIR / "batch_02.html").exists()
    assert json.loads((repo / rag_stages.EVAL_METRICS).read_text())["gate_approved"] is True
    second = _run(["dvc", "repro"], repo, env)
    # rag_ingest always runs (its index lives in Qdrant, outside DVC); on an unchanged corpus it
    # builds nothing, so its output is unchanged and nothing downstream runs.
    assert '"status": "unchanged"' in second and '"chunks_embedded": 0' in second
    assert _stages_run(second) == ["rag_ingest"] and "Stage 'rag_evaluate' didn't change, skipping" in second


def test_changing_a_param_reruns_only_its_dependants(repo_copy):
    repo, env = repo_copy
    _run(["dvc", "repro"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ml"]["drift"]["drift_share_threshold"] = 0.45
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], repo, env)
    assert set(_stages_run(out)) == {"monitor", "rag_ingest"}


def test_push_and_pull_through_the_local_remote(repo_copy):
    repo, env = repo_copy
    _run(["dvc", "repro"], repo, env)
    _run(["dvc", "push"], repo, env)
    shutil.rmtree(repo / "models")
    _run(["dvc", "pull"], repo, env)
    assert (repo / stages.MODEL_DIR / "MLmodel").exists()


def test_dvc_yaml_outputs_match_the_stage_code():
    """Paths are named once in opsfabric/ml/stages.py; dvc.yaml must declare the same ones."""
    declared = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]

    def paths(stage: str, kind: str) -> set[str]:
        return {next(iter(e)) if isinstance(e, dict) else e for e in declared[stage].get(kind, [])}

    assert str(stages.MODEL_DIR) in paths("train", "outs")
    assert str(stages.TRAIN_METRICS) in paths("train", "metrics")
    assert str(stages.VALIDATION_DIR) in paths("validate", "outs")
    assert str(stages.DRIFT_DIR) in paths("monitor", "outs")
    assert str(stages.DRIFT_METRICS) in paths("monitor", "metrics")
    assert {str(stages.ROC_PLOT), str(stages.BATCH_PLOT)} <= paths("evaluate", "plots")
