"""The served app: llama-cpp-python's OpenAI-compatible server plus one route that says what it serves.

Run by :mod:`opsfabric.llm.launcher` as ``python -m opsfabric.llm.server --config <file.json>`` (the
launcher resolves the GGUF files and their sha256 first). ``GET /opsfabric/model-info`` answers
``{"server": {"name", "version"}, "models": {alias: {file, sha256, kind, chat_format, ...}}}``:
any client can label what it got from the server that answered, in any process.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

NATIVE_TOOLS_FORMAT = "chatml-function-calling"  # llama-cpp-python's own tools path (unreliable: see docs/local_model.md)


def build_app(config: dict):
    """The FastAPI app for ``config`` (the launcher's JSON: host, port, threads and the model aliases)."""
    import llama_cpp
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    server = ServerSettings(host=config["host"], port=config["port"])
    models = [
        ModelSettings(model=m["path"], model_alias=alias, chat_format=m["served_chat_format"], n_threads=config["n_threads"],
                      n_threads_batch=config["n_threads"], n_ctx=config["n_ctx"], seed=config["seed"], verbose=False)
        for alias, m in config["aliases"].items()
    ]
    app = create_app(server_settings=server, model_settings=models)
    info = {"server": {"name": "llama-cpp-python", "version": llama_cpp.__version__},
            "models": {alias: {k: v for k, v in m.items() if k != "path"} for alias, m in config["aliases"].items()},
            "n_threads": config["n_threads"], "n_ctx": config["n_ctx"], "pid": os.getpid()}

    @app.get("/opsfabric/model-info")
    def model_info() -> dict:
        return info

    return app


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM this server when the process that started it dies (Linux prctl PR_SET_PDEATHSIG), even by SIGKILL:
    a killed launcher, control room or test run leaves no model server behind."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m opsfabric.llm.server")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process dies")
    args = parser.parse_args()
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    config = json.loads(args.config.read_text())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import uvicorn

    uvicorn.run(build_app(config), host=config["host"], port=config["port"], log_level="warning")


if __name__ == "__main__":
    main()
