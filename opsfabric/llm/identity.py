"""What answers at an OpenAI-compatible base URL: the labels every model-made result carries.

:func:`probe_identity` asks the endpoint once per process (cached): ``GET /v1/models`` (any
OpenAI-compatible server) and ``GET /opsfabric/model-info`` (the local server of ``make llm``: the
GGUF's file name and sha256, the server and its version), every time it is asked: labels come from
the server that answers now. A server that does not know the
requested model name is labelled so: llama-cpp-python then silently answers with its default model.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


def _get_json(url: str, timeout: float, api_key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return json.loads(response.read())


def public_url(url: str) -> str:
    """The URL without user, password or query (what labels and error messages may show)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def probe_identity(base_url: str, model: str, timeout: float = 5.0, api_key: str | None = None) -> dict[str, Any]:
    """Labels of ``model`` at ``base_url``, asked of the server now (never cached: a restarted server with another
    file is labelled as what it is). Never raises: an unreachable endpoint, or one that refuses the probe, is labelled so.

    Keys: ``gen_ai.request.model``, ``opsfabric.model.served`` (the name the server answers with),
    ``opsfabric.model.file``, ``opsfabric.model.sha256``, ``opsfabric.model.kind``,
    ``opsfabric.server`` (name and version) and ``opsfabric.server.url`` (without credentials); keys
    the server cannot tell are left out, never guessed.
    """
    base = base_url.rstrip("/")
    labels: dict[str, Any] = {"gen_ai.request.model": model, "opsfabric.server.url": public_url(base)}
    try:
        ids = [m.get("id") for m in _get_json(f"{base}/models", timeout, api_key).get("data", [])]
    except urllib.error.HTTPError as exc:
        labels["opsfabric.server"] = f"answered HTTP {exc.code} to the model list (file and digest unknown)"
        return labels
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
        labels["opsfabric.server"] = f"unreachable at probe time ({type(exc).__name__})"
        return labels
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    try:
        info = _get_json(f"{root}/opsfabric/model-info", timeout, api_key)
        server = f"{info['server']['name']} {info['server']['version']}"
        models = dict(info.get("models") or {})
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError, AttributeError):
        info, server, models = None, None, {}
    if model in ids:
        labels["opsfabric.model.served"] = model
    elif info is not None and ids:
        labels["opsfabric.model.served"] = ids[0]  # llama-cpp-python answers an unknown name with its first model
        labels["opsfabric.model.note"] = f"the server does not serve {model!r}; it answers with its default model {ids[0]!r}"
    if info is not None:
        served = models.get(labels.get("opsfabric.model.served", ""), {})
        labels.update({
            "opsfabric.server": server,
            "opsfabric.model.file": served.get("file"),
            "opsfabric.model.sha256": served.get("sha256"),
            "opsfabric.model.kind": served.get("kind"),
            "opsfabric.model.distribution": served.get("distribution"),
            "opsfabric.server.n_threads": info.get("n_threads"),
        })
    else:
        labels["opsfabric.server"] = "OpenAI-compatible endpoint (no model-info route: file and digest unknown)"
    return {k: v for k, v in labels.items() if v is not None}
