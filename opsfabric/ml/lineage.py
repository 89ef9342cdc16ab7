"""Where a run comes from: git commit, DVC hashes of its input files, config hash, Prefect flow run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from opsfabric import tracking
from opsfabric.ml.dataset import file_md5
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage


def config_hash(settings: Settings) -> str:
    """Short hash of the dataset definition and ML parameters (not of machine-specific paths)."""
    payload = json.dumps(
        {"dataset": settings.dataset.model_dump(mode="json"), "ml": settings.ml.model_dump(mode="json")}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def lineage_for(settings: Settings, *, data_files: list[Path], flow_run_id: str | None = None, flow_run_url: str | None = None) -> Lineage:
    """Lineage tags: git commit, DVC (md5) hashes of the input files, config hash, Prefect flow run."""
    return Lineage(
        git_commit=tracking.git_commit(),
        flow_run_id=flow_run_id,
        flow_run_url=flow_run_url,
        data_md5={Path(p).stem: file_md5(p) for p in data_files},
        config_hash=config_hash(settings),
    )
