"""Bad requests and bad answers: refused before anything runs or is saved, with a named error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from opsfabric.agents.agent import build_agent, check_request, open_checkpointer, resume_run, start_run
from opsfabric.agents.errors import RequestError, ThreadStateError
from opsfabric.agents.replay import ReplayBackend
from opsfabric.agents.settings import AgentsSettings
from opsfabric.settings import PROJECT_ROOT


@pytest.mark.unit
@pytest.mark.parametrize("request_text", ["", "   ", "\n\t "])
def test_an_empty_request_is_refused(request_text):
    with pytest.raises(RequestError, match="the request is empty"):
        check_request(request_text, 100)


@pytest.mark.unit
def test_the_request_limit_is_named_and_inclusive():
    check_request("x" * 100, 100)
    with pytest.raises(RequestError, match=r"101 characters long, over the limit of 100 \(agents.max_request_chars\)"):
        check_request("x" * 101, 100)
    assert AgentsSettings().max_request_chars == 2000


@pytest.fixture
def agent(tmp_path):
    backend = ReplayBackend(journal=tmp_path / "journal.jsonl")
    return build_agent(AgentsSettings(max_request_chars=60), backend, open_checkpointer(tmp_path / "cp.sqlite"))


@pytest.mark.flows
def test_bad_requests_run_nothing_and_save_no_thread(agent, tmp_path):
    config = {"configurable": {"thread_id": "ops-bad"}}
    with pytest.raises(RequestError, match="limit of 60"):
        start_run(agent, "promote model version 4 " + "please " * 10, thread_id="ops-bad")
    with pytest.raises(RequestError, match="empty"):
        start_run(agent, "  ", thread_id="ops-bad")
    assert not agent.graph.get_state(config).values and not (tmp_path / "journal.jsonl").exists()
    with pytest.raises(ThreadStateError, match="unknown thread ops-bad"):
        resume_run(agent, "ops-bad", {"type": "approve"})
    # the same thread id still works for a good request, and a double approval runs the action once
    pending = start_run(agent, "promote model version 4", thread_id="ops-bad")
    assert pending.status == "awaiting_approval"
    assert resume_run(agent, "ops-bad", {"type": "approve"}).status == "completed"
    with pytest.raises(ThreadStateError, match="no pending approval"):
        resume_run(agent, "ops-bad", {"type": "approve"})
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) == 1
    with pytest.raises(ThreadStateError, match="ops-bad already exists"):
        start_run(agent, "show the index status", thread_id="ops-bad")


@pytest.mark.flows
def test_the_command_line_prints_the_named_error(tmp_path):
    env = {**os.environ, "OPSFABRIC_STATE_DIR": str(tmp_path), "OPSFABRIC_AGENTS__MAX_REQUEST_CHARS": "30"}
    for request, message in (("", "error: the request is empty"), ("x" * 31, "error: the request is 31 characters long, over the limit of 30")):
        done = subprocess.run([sys.executable, "-m", "flows.agent", "--backend", "replay", "ask", request], cwd=PROJECT_ROOT,
                              env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
