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
            "n_threads": config["n_threads"], "n_ctx": config["n_ctx"]}

    @app.get("/opsfabric/model-info")
    def model_info() -> dict:
        return info

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m opsfabric.llm.server")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import uvicorn

    uvicorn.run(build_app(config), host=config["host"], port=config["port"], log_level="warning")


if __name__ == "__main__":
    main()
