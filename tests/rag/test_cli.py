"""The RAG command lines in real processes: ``--config`` files are used, and a named error prints its
message and hint with exit status 2 (1 for a DVC stage), not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsfabric.settings import PROJECT_ROOT

pytestmark = pytest.mark.flows


def command(module: str, *args: str, prefect_url: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OPSFABRIC_CONFIG"}
    if prefect_url:
        env["PREFECT_API_URL"] = prefect_url  # the test session's API: no temporary server per process
    return subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def prefect_url(prefect_api) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def assert_named_error(done: subprocess.CompletedProcess, message: str, status: int = 2) -> None:
    assert done.returncode == status, done.stderr[-3000:]
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


def test_flow_commands_use_their_config_files_and_print_named_errors(overlay_file, prefect_url, tmp_path: Path):
    overlay = overlay_file()[0]
    missing = tmp_path / "no-such-corpus"
    Path(overlay).with_name("missing.yaml").write_text(f"rag:\n  corpus:\n    path: {missing}\n")
    missing_corpus = str(Path(overlay).with_name("missing.yaml"))

    # the overlay's empty state folder is what rag_eval looks in: nothing built there
    assert_named_error(command("flows.rag_eval", "--config", overlay, prefect_url=prefect_url), "error: no built index version")
    # the corpus named by the second file is the one ingest reads
    done = command("flows.ingest", "--config", overlay, "--config", missing_corpus, prefect_url=prefect_url)
    assert_named_error(done, "error: ")
    assert str(missing) in done.stderr
    assert_named_error(command("flows.rag_index", "--config", overlay, "rollback", prefect_url=prefect_url), "has no earlier live version to roll back to")
    assert_named_error(command("flows.rag_pipeline", "--config", overlay, "--config", missing_corpus, prefect_url=prefect_url), str(missing))
    # --traceback shows it
    done = command("flows.rag_index", "--config", overlay, "--traceback", "rollback", prefect_url=prefect_url)
    assert done.returncode != 0 and "Traceback" in done.stderr and "IndexVersionError" in done.stderr


def test_a_dvc_stage_prints_a_named_error_and_exits_non_zero(overlay_file, tmp_path: Path):
    overlay = overlay_file(corpus={"path": str(tmp_path / "no-such-corpus")})[0]
    done = command("opsfabric.rag.stages", "ingest", "--config", overlay)
    assert_named_error(done, "stage ingest failed: ", status=1)
    assert str(tmp_path / "no-such-corpus") in done.stderr
