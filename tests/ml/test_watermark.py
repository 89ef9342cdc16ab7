"""The monitor's watermark without Prefect: new files found once, claims exclusive, failures retried, corruption named."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from opsfabric.ml import watermark as wm
from opsfabric.ml.watermark import BatchFolder, WatermarkError

pytestmark = pytest.mark.unit


@pytest.fixture
def folder(tmp_path: Path) -> BatchFolder:
    data = tmp_path / "data"
    data.mkdir()
    (data / "reference.parquet").write_bytes(b"reference")
    for i in (1, 2):
        (data / f"batch_0{i}.parquet").write_bytes(f"batch {i}".encode())
    return BatchFolder("churn", data, "batch_*.parquet", wm.watermark_path(tmp_path / "state", "churn"), {data / "reference.parquet"})


@pytest.fixture
def settings(make_settings):
    return make_settings()


def claimed_names(settings, folder) -> list[str]:
    with wm.claim_new_batches(settings, folder) as claim:
        for batch in claim.batches:
            claim.mark_monitored(batch, {"drift_share": 0.0})
        return [b.name for b in claim.batches]


def test_each_batch_is_monitored_once_and_a_dropped_file_is_found(settings, folder):
    assert claimed_names(settings, folder) == ["batch_01.parquet", "batch_02.parquet"]
    assert claimed_names(settings, folder) == []
    (folder.data_dir / "batch_03.parquet").write_bytes(b"new data")
    assert claimed_names(settings, folder) == ["batch_03.parquet"]
    assert claimed_names(settings, folder) == []
    saved = json.loads(folder.watermark.read_text())
    assert sorted(saved["monitored"]) == ["batch_01.parquet", "batch_02.parquet", "batch_03.parquet"] and saved["claims"] == {}


def test_a_changed_file_is_monitored_again(settings, folder):
    claimed_names(settings, folder)
    (folder.data_dir / "batch_02.parquet").write_bytes(b"corrected batch 2")
    assert claimed_names(settings, folder) == ["batch_02.parquet"]


def test_a_failed_batch_is_released_and_retried_next_run(settings, folder):
    with pytest.raises(RuntimeError):
        with wm.claim_new_batches(settings, folder) as claim:
            claim.mark_monitored(claim.batches[0])
            raise RuntimeError("monitoring of batch_02 failed")
    assert json.loads(folder.watermark.read_text())["claims"] == {}
    assert claimed_names(settings, folder) == ["batch_02.parquet"]


def test_two_runs_at_once_never_take_the_same_batch(settings, folder):
    for i in range(3, 9):
        (folder.data_dir / f"batch_0{i}.parquet").write_bytes(f"batch {i}".encode())
    taken: list[list[str]] = []
    inside = threading.Barrier(2)

    def run():
        with wm.claim_new_batches(settings, folder) as claim:
            taken.append([b.name for b in claim.batches])
            inside.wait(timeout=10)  # both runs hold their claims at the same time
            for batch in claim.batches:
                claim.mark_monitored(batch)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [n for run_names in taken for n in run_names]
    assert sorted(names) == sorted(set(names)) and len(names) == 8
    assert claimed_names(settings, folder) == []


def test_a_claim_of_a_dead_process_is_taken_over(settings, folder):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    owner = wm.this_owner() | {"pid": int(dead.stdout), "started": 1}
    with wm.claim_new_batches(settings, folder, owner=owner) as claim:
        assert len(claim.batches) == 2
        claim._open.clear()  # the run "crashed": its claims stay in the file
    assert set(json.loads(folder.watermark.read_text())["claims"]) == {"batch_01.parquet", "batch_02.parquet"}
    assert claimed_names(settings, folder) == ["batch_01.parquet", "batch_02.parquet"]


def test_a_corrupted_watermark_names_the_file_and_the_repair(settings, folder):
    claimed_names(settings, folder)
    folder.watermark.write_text('{"dataset": "churn", "monitored": {"batch_01.parq')
    with pytest.raises(WatermarkError) as info:
        claimed_names(settings, folder)
    assert str(folder.watermark) in str(info.value) and "corrupted" in str(info.value)
    assert f"{folder.watermark}.bak" in info.value.hint and "delete" in info.value.hint
    # repair 1: restore the backup, the version before the last good write (a corrupted file never becomes the backup)
    Path(f"{folder.watermark}.bak").replace(folder.watermark)
    restored = wm.read_watermark(folder.watermark, "churn")
    assert "batch_01.parquet" in restored.monitored
    # repair 2: delete it; every batch in the folder is monitored once more
    folder.watermark.unlink()
    assert claimed_names(settings, folder) == ["batch_01.parquet", "batch_02.parquet"]


@pytest.mark.parametrize(
    "content, problem",
    [('["batch_01"]', "top level is a list"), ('{"dataset": "iris", "monitored": {}}', "'dataset' is 'iris'"),
     ('{"dataset": "churn", "monitored": {"batch_01.parquet": "done"}}', "'monitored' must map")],
)
def test_a_watermark_of_the_wrong_shape_is_refused(tmp_path, content, problem):
    path = tmp_path / "churn.json"
    path.write_text(content)
    with pytest.raises(WatermarkError, match=problem):
        wm.read_watermark(path, "churn")


def test_default_pattern_follows_the_configured_files(make_settings):
    assert wm.default_batch_pattern(["data/raw/churn/batch_01.parquet"], "data/raw/churn/reference.parquet") == "batch_*.parquet"
    assert wm.default_batch_pattern([], "data/raw/bc/reference.csv") == "batch_*.csv"
    folder = wm.batch_folder(make_settings())
    assert folder.pattern == "batch_*.parquet" and folder.data_dir.name == "churn"
    assert folder.watermark.name == "churn.json" and folder.watermark.parent.name == "watermarks"


def test_a_batch_monitored_by_name_is_not_monitored_again_by_the_daily_run(settings, folder, tmp_path):
    # make run, the weekly pipeline, or `monitor batch_01` monitored it: the watermark records it
    assert wm.record_monitored(settings, folder.data_dir / "batch_01.parquet", {"drift_share": 0.1}, folder) is True
    assert wm.record_monitored(settings, folder.data_dir / "reference.parquet", folder=folder) is False  # excluded
    outside = tmp_path / "elsewhere.parquet"
    outside.write_bytes(b"x")
    assert wm.record_monitored(settings, outside, folder=folder) is False
    assert claimed_names(settings, folder) == ["batch_02.parquet"]
