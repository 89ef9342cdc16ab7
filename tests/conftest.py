"""Shared fixtures: a throwaway state folder per test and one real Prefect API per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opsfabric.runtime_env import configure_runtime_env

# Tests never touch the developer's .opsfabric state: everything lives under pytest's tmp dirs.
_SESSION_STATE = Path(os.environ.setdefault("OPSFABRIC_TEST_STATE", str(Path.cwd() / ".pytest_state")))
configure_runtime_env(_SESSION_STATE)

from opsfabric.settings import PROJECT_ROOT, Settings, load_settings  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (temporary SQLite-backed server) shared by every flow test in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def make_settings(tmp_path: Path):
    """Build Settings from the repo's configs with state and data under ``tmp_path``.

    Keyword arguments merge over the YAML values (nested dicts merge key by key).
    """

    def factory(*extra_files: str, **overrides) -> Settings:
        overrides.setdefault("state_dir", tmp_path / "state")
        return load_settings(*extra_files, root=PROJECT_ROOT, **overrides)

    return factory


@pytest.fixture(scope="session")
def local_llm(tmp_path_factory):
    """A real local model server for the session: llama-cpp-python serving SmolLM2-135M-Instruct on a free port.

    Needs the ``.[llm]`` extra (``make test`` installs it); a missing extra fails the test with the
    named error and its install command, it is never skipped. Clients reach it through
    ``configs/profiles/local-llm.yaml`` with ``llm.server.port`` set to ``local_llm.port``.
    """
    from opsfabric.llm.launcher import start_server
    from tests.servers import free_port

    settings = load_settings(root=PROJECT_ROOT, state_dir=tmp_path_factory.mktemp("llm-state"),
                             llm={"server": {"port": free_port(), "n_threads": 1}})
    server = start_server(settings)
    yield server
    server.stop()


@pytest.fixture
def llm_settings(local_llm, make_settings):
    """Settings of the local-llm profile pointed at the session's model server (state under the test's tmp_path)."""

    def factory(*extra_files: str, **overrides) -> Settings:
        llm = overrides.pop("llm", {})
        server = {**llm.get("server", {}), "port": local_llm.port}
        return make_settings("configs/profiles/local-llm.yaml", *extra_files, llm={**llm, "server": server}, **overrides)

    return factory
