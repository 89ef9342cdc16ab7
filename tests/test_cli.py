"""Command lines print a named error as message + hint, without a traceback (unless asked)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from opsfabric.cli import format_error, pop_global_options
from opsfabric.errors import OpsFabricError
from opsfabric.settings import PROJECT_ROOT


def _run(args: list[str], tmp_path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPSFABRIC_CONFIG")}
    environ.update(PREFECT_HOME=str(tmp_path / "prefect"), **env)
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, env=environ, capture_output=True, text=True, timeout=120)


@pytest.mark.unit
def test_global_options_are_split_out():
    rest, configs, traceback = pop_global_options(["ask", "--config", "a.yaml", "q?", "--config=b.yaml", "--traceback"])
    assert (rest, configs, traceback) == (["ask", "q?"], ["a.yaml", "b.yaml"], True)


@pytest.mark.unit
def test_format_error_has_message_and_hint():
    text = format_error(OpsFabricError("data/x.csv row 3: bad", hint="fix the row"))
    assert text.splitlines()[:2] == ["error: data/x.csv row 3: bad", "hint: fix the row"]


@pytest.mark.unit
def test_config_typo_on_the_command_line_is_a_message_naming_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rag:\n  chunking:\n    chunk_sise: 10\n")
    done = _run(["flows.platform", "--config", str(bad)], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: invalid configuration" in done.stderr
    assert f"rag.chunking.chunk_sise: Extra inputs are not permitted (set in {bad})" in done.stderr
    assert "hint:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.unit
def test_traceback_on_request(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ml:\n  gate:\n    flor: 1\n")
    done = _run(["flows.platform", "--config", str(bad), "--traceback"], tmp_path)
    assert done.returncode != 0 and "Traceback" in done.stderr and "ml.gate.flor" in done.stderr
    done = _run(["flows.platform", "--config", str(bad)], tmp_path, OPSFABRIC_TRACEBACK="1")
    assert "Traceback" in done.stderr
