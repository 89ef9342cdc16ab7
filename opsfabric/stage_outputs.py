"""Writing DVC stage outputs: one format for every metrics and report file the stages write."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, payload: dict) -> None:
    """Sorted, indented JSON with a trailing newline (stable bytes, so DVC sees real changes only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
