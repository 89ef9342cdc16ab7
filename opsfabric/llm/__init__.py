"""A local language model for the LLM paths: a llama-cpp-python server over a GGUF shipped in a PyPI package.

* :mod:`opsfabric.llm.settings`: the typed ``llm:`` section (which model, host, port, threads).
* :mod:`opsfabric.llm.models`: where each known GGUF comes from (a package, never a hub) and its sha256.
* :mod:`opsfabric.llm.server`: the served app (llama-cpp-python's OpenAI-compatible app plus a
  ``/opsfabric/model-info`` route naming the file, its sha256 and the server version).
* :mod:`opsfabric.llm.launcher`: ``make llm`` / ``make stop`` / test fixtures: start, wait, stop.
* :mod:`opsfabric.llm.identity`: what answers at a base URL (labels for traces, answers, runs).

Everything here is optional: the extra ``.[llm]`` installs llama-cpp-python; without it the
offline defaults (planner, extractive answers, non-LLM metrics) run as before.
"""
