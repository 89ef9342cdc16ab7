"""Writing DVC stage outputs: one format for every metrics and report file the stages write."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, payload: dict) -> None:
    """Sorted, indented JSON with a trailing newline (stable bytes, so DVC sees real changes only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def check_dvc_dataset(settings) -> None:
    """Under ``dvc repro``, refuse a dataset other than the one dvc.yaml tracks.

    dvc.yaml reads ``dataset.data_dir`` and ``dataset.reference`` from ``configs/base.yaml``; DVC
    cannot see ``OPSFABRIC_CONFIG`` or environment overrides. A stage that read another dataset
    would write outputs DVC attributes to the wrong inputs, so it stops first.

    Raises:
        ConfigError: running inside a DVC stage (``DVC_STAGE`` is set) with another dataset.
    """
    import os

    import yaml

    from opsfabric.errors import ConfigError

    if not os.environ.get("DVC_STAGE"):
        return
    tracked = yaml.safe_load(settings.path("configs/base.yaml").read_text())["dataset"]
    active = settings.dataset
    if (tracked.get("data_dir"), tracked.get("reference")) != (active.data_dir, active.reference):
        raise ConfigError(
            f"dvc.yaml tracks dataset {tracked.get('data_dir')!r} (configs/base.yaml) but this stage was configured "
            f"for {active.data_dir!r} (OPSFABRIC_CONFIG or OPSFABRIC_DATASET__*)",
            hint="to run the DVC pipeline on another dataset, put its dataset section in configs/base.yaml; "
            "the Prefect flows take OPSFABRIC_CONFIG as they are",
        )
