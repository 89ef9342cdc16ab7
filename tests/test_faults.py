"""Faults: unreachable servers and damaged state files give named errors, and nothing is half-written."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from opsfabric.preflight import redact_uri
from opsfabric.settings import PROJECT_ROOT


def _closed_port() -> int:
    with socket.socket() as sock:  # bound then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPSFABRIC_", "PREFECT_API_URL"))}
    environ.update(PREFECT_HOME=str(tmp_path / "prefect"), OPSFABRIC_STATE_DIR=str(tmp_path / "state"),
                   OPSFABRIC_SERVERS__CONNECT_ATTEMPTS="2", OPSFABRIC_SERVERS__CONNECT_BACKOFF_SECONDS="0.2", **env)
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.unit
def test_redact_uri_masks_only_the_password():
    assert redact_uri("postgresql://ops:s3cret@db:5432/mlflow") == "postgresql://ops:***@db:5432/mlflow"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact_uri("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"


@pytest.mark.flows
def test_mlflow_server_unreachable_is_named_and_nothing_is_registered(tmp_path):
    port = _closed_port()
    done = _run(["flows.train", "--config", "configs/profiles/small.yaml"], tmp_path,
                OPSFABRIC_TRACKING__URI=f"http://ops:canary-pass-123@127.0.0.1:{port}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"MLflow tracking server at http://ops:***@127.0.0.1:{port} is unreachable" in done.stderr
    assert "2 attempts" in done.stderr and "servers.connect_attempts" in done.stderr
    assert "canary-pass-123" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    state = tmp_path / "state"
    assert not (state / "mlflow").exists()  # no local store was used instead, no model was logged anywhere
    assert not (state / "runs").exists()  # stopped when the flow started: no validation or training output either


@pytest.mark.flows
def test_prefect_api_unreachable_is_named(tmp_path):
    port = _closed_port()
    done = _run(["flows.validate"], tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"Prefect API at http://127.0.0.1:{port}/api is unreachable" in done.stderr
    assert "hint: start the server, or point PREFECT_API_URL" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.unit
def test_damaged_index_registry_is_named_and_repaired_from_its_backup(tmp_path):
    from opsfabric.errors import OpsFabricError
    from opsfabric.files import backup_path
    from opsfabric.rag.versions import IndexVersion, VersionRegistry

    path = tmp_path / "versions.json"
    registry = VersionRegistry(path)
    registry.versions.append(IndexVersion(version=1, collection="docs-v0001", status="live", config_hash="c", index_config={}))
    registry._save()
    registry.versions.append(IndexVersion(version=2, collection="docs-v0002", status="built", config_hash="c", index_config={}))
    registry._save()
    path.write_text('{"versions": [{"version": 1, "collec')  # a torn write by something else, a disk fault
    with pytest.raises(OpsFabricError) as caught:
        VersionRegistry.read(path)
    assert str(path) in str(caught.value) and f"cp {backup_path(path)} {path}" in caught.value.hint
    shutil.copy(backup_path(path), path)  # the documented repair
    assert [v.collection for v in VersionRegistry.read(path).versions] == ["docs-v0001"]  # the registry before the last save


@pytest.mark.unit
def test_damaged_checkpoint_database_is_named(tmp_path):
    folder = tmp_path / "state" / "agents"
    folder.mkdir(parents=True)
    (folder / "checkpoints.sqlite").write_bytes(b"this is not a database" * 200)
    done = _run(["flows.agent", "--backend", "replay", "pending", "ops-123"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{folder / 'checkpoints.sqlite'}: the agent checkpoint database is unreadable" in done.stderr
    assert "move it aside" in done.stderr and "Traceback" not in done.stderr
