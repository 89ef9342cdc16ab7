"""The golden scenario suite: the shipped files, recording, the replay verdicts, determinism."""

from __future__ import annotations

import shutil

import pytest
import yaml

from opsfabric.agents.errors import GoldenError
from opsfabric.agents.golden import (
    ApprovalStep,
    approve_candidate,
    candidate_digest,
    golden_from_run,
    load_scenario,
    record_candidate,
    run_scenario,
    run_suite,
    scenario_files,
)
from opsfabric.agents.settings import AgentsSettings, RISKY_TOOLS, READ_ONLY_TOOLS
from opsfabric.agents.tools import tool_fingerprints
from opsfabric.settings import PROJECT_ROOT

GOLDEN = PROJECT_ROOT / "data" / "golden" / "agent"
REQUIRED_COVERAGE = {"compound", "abstain", "allowlist", "injection", "budget", "loop", "approval_denied", "approval_edited", "bad_arguments"}


@pytest.mark.data
def test_suite_files_are_valid_and_cover_the_issue():
    files = scenario_files(GOLDEN)
    assert len(files) >= 30
    scenarios = [load_scenario(f) for f in files]
    assert [s.id for s in scenarios] == [f.stem for f in files], "a scenario id must be its file name"
    covered = {tag for s in scenarios for tag in s.covers}
    assert REQUIRED_COVERAGE <= covered, REQUIRED_COVERAGE - covered
    called = {c.tool for s in scenarios for c in s.expect.trajectory.calls}
    assert set(READ_ONLY_TOOLS) | set(RISKY_TOOLS) <= called, "every tool appears in some golden trajectory"
    current = tool_fingerprints()
    stale = {s.id: t for s in scenarios for t, fp in s.tool_schemas.items() if current.get(t) != fp}
    assert stale == {}, "goldens recorded with other tool schemas: re-record them (python -m flows.agent_regression record ID)"


@pytest.mark.unit
def test_a_bad_scenario_file_names_file_and_key(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text(yaml.safe_dump({"id": "x", "description": "d", "request": "r", "expect": {"outcome": "completed", "trajectory": {"mode": "sideways"}}}))
    with pytest.raises(GoldenError, match=r"x.yaml: invalid scenario: expect.trajectory.mode"):
        load_scenario(bad)


@pytest.mark.flows
def test_record_writes_a_candidate_and_approve_replaces_the_golden(tmp_path):
    path = tmp_path / "promote_denied.yaml"
    shutil.copy(GOLDEN / "promote_denied.yaml", path)
    scenario = load_scenario(path)
    # the reviewer now allows it: the recorded behaviour changes, the golden does not until approved
    changed = scenario.model_copy(update={"approvals": [ApprovalStep(tool="promote_model_version", decision="approve")]})
    run = run_scenario(changed, AgentsSettings(), tmp_path / "work")
    assert run.verdict.status == "fail" and "outcome 'ok' != expected 'denied'" in run.verdict.render_diff()
    original = path.read_text()
    candidate = record_candidate(path, golden_from_run(changed, run))
    assert candidate.name == "promote_denied.candidate.yaml" and path.read_text() == original
    with pytest.raises(GoldenError, match="already exists"):
        record_candidate(path, golden_from_run(changed, run))
    assert scenario_files(tmp_path) == [path]  # candidates are not replayed as goldens
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["promote_denied.candidate.yaml", "promote_denied.yaml"]  # no temp left
    reviewed = candidate_digest(path)
    candidate.write_text(candidate.read_text() + "# changed after review\n")
    with pytest.raises(GoldenError, match="changed since it was reviewed"):
        approve_candidate(path, reviewed)
    assert path.read_text() == original
    approve_candidate(path, candidate_digest(path))
    assert not candidate.exists() and load_scenario(path).expect.trajectory.calls[0].outcome == "ok"
    with pytest.raises(GoldenError, match="no candidate to approve"):
        approve_candidate(path)


@pytest.mark.evals
def test_suite_passes_and_five_runs_give_identical_verdicts():
    from opsfabric.agents.planner import _embed_one

    verdicts = []
    for _ in range(5):
        _embed_one.cache_clear()  # each run embeds again: determinism of the method, not of a cache
        runs = run_suite(GOLDEN, AgentsSettings())
        verdicts.append([(r.scenario.id, r.verdict.status, r.verdict.score, r.verdict.reasons) for r in runs])
    failing = {sid: reasons for sid, status, _, reasons in verdicts[0] if status != "pass"}
    assert failing == {}
    assert all(v == verdicts[0] for v in verdicts[1:])


_RECORDER = """
import sys, time
from pathlib import Path
from opsfabric.agents.errors import GoldenError
from opsfabric.agents.golden import load_scenario, record_candidate
path, start = Path(sys.argv[1]), float(sys.argv[2])
scenario = load_scenario(path)
while time.time() < start:
    time.sleep(0.005)
try:
    record_candidate(path, scenario)
except GoldenError:
    sys.exit(3)
"""


@pytest.mark.unit
def test_concurrent_records_of_one_scenario_write_one_candidate(tmp_path):
    import subprocess
    import sys
    import time

    source = next((PROJECT_ROOT / "data/golden/agent").glob("*.yaml"))
    golden = tmp_path / source.name
    shutil.copy(source, golden)
    start = time.time() + 4  # every child has loaded its scenario by then: they race on the write
    procs = [subprocess.Popen([sys.executable, "-c", _RECORDER, str(golden), str(start)], cwd=PROJECT_ROOT) for _ in range(4)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    assert codes == [0, 3, 3, 3]
    assert len(list(tmp_path.glob("*.candidate.yaml"))) == 1


@pytest.mark.unit
@pytest.mark.parametrize("status, reason, calls, expected", [
    ("completed", None, 2, "completed"), ("abstained", None, 0, "asked to clarify"),
    ("completed", None, 0, "asked to clarify"),  # a model that replied without acting: the same class as an abstention
    ("stopped", "allowlist", 1, "refused: allowlist"), ("stopped", "budget:steps", 3, "refused: budget:steps"),
    ("awaiting_approval", None, 1, "awaiting approval"),
])
def test_outcome_classes_are_the_same_for_every_model(status, reason, calls, expected):
    from opsfabric.agents.golden import outcome_class

    assert outcome_class(status, reason, calls) == expected


@pytest.mark.unit
def test_a_model_section_adds_to_the_shared_expectations_only_for_that_model():
    scenario = load_scenario(GOLDEN / "champion_info.yaml")
    assert "offline planner" in scenario.expectations("offline-planner").answer.contains
    shared = scenario.expectations("smollm2-135m-instruct")
    assert "offline planner" not in shared.answer.contains and shared.answer.contains == scenario.expect.answer.contains


@pytest.mark.unit
def test_no_shared_expectation_names_the_offline_planner():
    # what only the planner says lives in its own section, so another model is judged on behaviour
    for path in scenario_files(GOLDEN):
        text = load_scenario(path).expect.model_dump_json().lower()
        assert "offline planner" not in text, path.name


@pytest.mark.flows
def test_a_decision_for_another_action_is_a_fail_verdict_naming_it_not_a_crash(tmp_path):
    scenario = load_scenario(GOLDEN / "promote_approved.yaml")
    wrong_tool = scenario.model_copy(update={"approvals": [ApprovalStep(tool="trigger_retraining", args={"batch": "batch_03"}, decision="approve")]})
    run = run_scenario(wrong_tool, AgentsSettings(), tmp_path / "a")
    assert run.verdict.status == "fail"
    assert any("pending action promote_model_version" in r and "matches no recorded decision" in r and "trigger_retraining" in r
               for r in run.verdict.reasons)
    wrong_args = scenario.model_copy(update={"approvals": [ApprovalStep(tool="promote_model_version", args={"version": 2}, decision="approve")]})
    assert "matches no recorded decision" in run_scenario(wrong_args, AgentsSettings(), tmp_path / "b").verdict.render_diff()
    bad_edit = scenario.model_copy(update={"approvals": [ApprovalStep(tool="promote_model_version", decision="edit", edited_args={"version": "four"})]})
    verdict = run_scenario(bad_edit, AgentsSettings(), tmp_path / "c").verdict
    assert verdict.status == "fail" and any("recorded edit of promote_model_version was refused" in r for r in verdict.reasons)
    assert not (tmp_path / "a" / "journal.jsonl").exists() and not (tmp_path / "c" / "journal.jsonl").exists()


@pytest.mark.unit
def test_an_unusable_model_reply_is_its_own_outcome_class():
    from opsfabric.agents.golden import outcome_class

    assert outcome_class("stopped", "model_output", 0) == "model output unusable"
    for path in scenario_files(GOLDEN):  # no golden can expect it: broken output never passes an abstention
        assert load_scenario(path).expect.outcome != "model output unusable"
