"""What answers at an OpenAI-compatible base URL: the labels every model-made result carries.

:func:`probe_identity` asks the endpoint once per process (cached): ``GET /v1/models`` (any
OpenAI-compatible server) and ``GET /opsfabric/model-info`` (the local server of ``make llm``: the
GGUF's file name and sha256, the server and its version). A server that does not know the
requested model name is labelled so: llama-cpp-python then silently answers with its default model.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


_KNOWN: dict[tuple[str, str], dict[str, Any]] = {}  # answers of reachable servers, per process (an unreachable one is asked again)


def probe_identity(base_url: str, model: str, timeout: float = 5.0) -> dict[str, Any]:
    """Labels of ``model`` at ``base_url`` (never raises: an unreachable endpoint is labelled so).

    Keys: ``gen_ai.request.model``, ``opsfabric.model.served`` (the name the server answers with),
    ``opsfabric.model.file``, ``opsfabric.model.sha256``, ``opsfabric.model.kind``,
    ``opsfabric.server`` (name and version) and ``opsfabric.server.url``; keys the server cannot
    tell are left out, never guessed.
    """
    if (base_url, model) in _KNOWN:
        return dict(_KNOWN[(base_url, model)])
    base = base_url.rstrip("/")
    labels: dict[str, Any] = {"gen_ai.request.model": model, "opsfabric.server.url": base}
    try:
        ids = [m.get("id") for m in _get_json(f"{base}/models", timeout).get("data", [])]
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
        labels["opsfabric.server"] = f"unreachable at probe time ({type(exc).__name__})"
        return labels
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    try:
        info = _get_json(f"{root}/opsfabric/model-info", timeout)
    except (urllib.error.URLError, OSError, ValueError):
        info = None
    if model in ids:
        labels["opsfabric.model.served"] = model
    elif info is not None and ids:
        labels["opsfabric.model.served"] = ids[0]  # llama-cpp-python answers an unknown name with its first model
        labels["opsfabric.model.note"] = f"the server does not serve {model!r}; it answers with its default model {ids[0]!r}"
    if info is not None:
        served = (info.get("models") or {}).get(labels.get("opsfabric.model.served", ""), {})
        labels.update({
            "opsfabric.server": f"{info['server']['name']} {info['server']['version']}",
            "opsfabric.model.file": served.get("file"),
            "opsfabric.model.sha256": served.get("sha256"),
            "opsfabric.model.kind": served.get("kind"),
            "opsfabric.model.distribution": served.get("distribution"),
            "opsfabric.server.n_threads": info.get("n_threads"),
        })
    else:
        labels["opsfabric.server"] = "OpenAI-compatible endpoint (no model-info route: file and digest unknown)"
    _KNOWN[(base_url, model)] = {k: v for k, v in labels.items() if v is not None}
    return dict(_KNOWN[(base_url, model)])
