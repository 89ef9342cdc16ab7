"""The first flow run on a fresh machine: an empty PREFECT_HOME, a busy CPU, and no luck needed.

Prefect's ephemeral API creates its SQLite database on first start. Its default 20 s start-up
budget was not always enough on a busy 2-core machine; ``opsfabric.runtime_env`` gives it 180 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsfabric.ml.datagen import generate_churn_batches
from opsfabric.settings import PROJECT_ROOT

pytestmark = pytest.mark.flows


def _overlay(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    generate_churn_batches(data, seed=1, reference_rows=600, batch_rows=300, start_date="2025-01-01")
    dataset = yaml.safe_load((PROJECT_ROOT / "configs/base.yaml").read_text())["dataset"]
    dataset.update(data_dir=str(data), reference=str(data / "reference.parquet"), batches=[str(data / "batch_01.parquet")])
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "dataset": dataset}))
    return overlay


def test_first_run_on_an_empty_prefect_home_while_the_cpu_is_busy(tmp_path):
    overlay = _overlay(tmp_path)
    prefect_home = tmp_path / "fresh-prefect-home"
    assert not prefect_home.exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OPSFABRIC_"))}
    env.update(PREFECT_HOME=str(prefect_home), OPSFABRIC_CONFIG=str(overlay))
    # one busy-looping process per core, for the whole run
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flows.validate"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Starting temporary server" in output  # the ephemeral API, created from nothing
    assert (prefect_home / "prefect.db").exists()
    assert "Timed out while attempting to connect" not in output
