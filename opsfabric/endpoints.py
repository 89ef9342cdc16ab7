"""OpenAI-compatible endpoints: the API key they are sent, named for what it is when none is set."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Sent when the configured environment variable is unset. The OpenAI client refuses an empty key,
# and local OpenAI-compatible servers (Ollama, vLLM, llama.cpp) ignore the key; a server that
# does check keys answers 401, and the warning below names the variable to set.
NO_API_KEY_PLACEHOLDER = "opsfabric-no-api-key-configured"
_warned: set[tuple[str, str]] = set()  # once per (variable, purpose) and process: a K-trial suite builds many agents


def api_key_or_placeholder(env_name: str, *, purpose: str) -> str:
    """The key in ``env_name``, or :data:`NO_API_KEY_PLACEHOLDER` with a warning naming the variable."""
    key = os.environ.get(env_name)
    if key:
        return key
    if (env_name, purpose) not in _warned:
        _warned.add((env_name, purpose))
        log.warning("%s: environment variable %s is not set; sending a placeholder key (fine for local servers without auth)", purpose, env_name)
    return NO_API_KEY_PLACEHOLDER
