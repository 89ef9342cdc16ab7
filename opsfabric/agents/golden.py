"""Golden scenarios: one readable YAML file each, replayed against the agent and judged by the matcher.

A scenario holds the request, the profile (and optional budget override and backend faults), the
approval decisions to replay in order, the expected trajectory with its match rules, answer and
outcome checks, and the fingerprints of the tool schemas it was recorded with.

Recording never overwrites silently: ``record_candidate`` writes ``<id>.candidate.yaml`` beside
the golden (and refuses if one is already there), ``approve_candidate`` replaces the golden with
it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opsfabric.agents.errors import GoldenError
from opsfabric.agents.matching import AnswerChecks, ExpectedCall, TrajectorySpec, Verdict, judge
from opsfabric.agents.settings import AgentsSettings, BudgetSettings
from opsfabric.agents.tools import TOOL_SPECS, tool_fingerprints
from opsfabric.agents.trace import trajectory

CANDIDATE_SUFFIX = ".candidate.yaml"


class Expectations(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str
    stop_reason: str | None = None
    approvals: list[str] | None = Field(default=None, description="Human decisions in order (approve/edit/deny); None: not checked.")
    trajectory: TrajectorySpec
    answer: AnswerChecks = Field(default_factory=AnswerChecks)


class Scenario(BaseModel):
    """One golden scenario file."""

    model_config = ConfigDict(extra="forbid")

    id: str
    description: str
    covers: list[str] = Field(default_factory=list, description="Tags: which tool / risk this scenario covers.")
    request: str
    profile: str = "operator"
    budget: BudgetSettings | None = Field(default=None, description="Override of the profile's budget.")
    faults: dict[str, str] = Field(default_factory=dict, description="Replay backend faults: tool -> error.")
    approvals: list[dict[str, Any]] = Field(default_factory=list, description="Decisions replayed in order.")
    expect: Expectations
    tool_schemas: dict[str, dict[str, str]] = Field(default_factory=dict)


def load_scenario(path: Path) -> Scenario:
    """Parse one scenario file; errors name the file and the key."""
    try:
        return Scenario.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise GoldenError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise GoldenError(f"{path}: invalid scenario: {problems}") from None


def scenario_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml") if not p.name.endswith(CANDIDATE_SUFFIX))


@dataclass
class ScenarioRun:
    scenario: Scenario
    result: Any
    verdict: Verdict
    seconds: float
    cost_usd: float


def _config_for(base: AgentsSettings, scenario: Scenario) -> AgentsSettings:
    if scenario.budget is None:
        return base
    profiles = dict(base.profiles)
    profiles[scenario.profile] = profiles[scenario.profile].model_copy(update={"budget": scenario.budget})
    return base.model_copy(update={"profiles": profiles})


def approvals_of(trace: dict[str, Any] | None) -> list[str]:
    """The human decisions of a trace, in order."""
    return [e["attributes"]["opsfabric.approval.decision"] for e in (trace or {}).get("events", []) if e["kind"] == "approval"]


def run_scenario(scenario: Scenario, config: AgentsSettings, workdir: Path, *, backend: Any = None,
                 model: Any = None, specs: Any = None) -> ScenarioRun:
    """Replay one scenario on a fresh checkpointer (replay backend unless one is given) and judge it.

    ``model`` and ``specs`` replace the configured decision model and the tool specs (mutation tests).
    """
    from opsfabric.agents.agent import build_agent, open_checkpointer, resume_run, start_run
    from opsfabric.agents.replay import ReplayBackend

    workdir.mkdir(parents=True, exist_ok=True)
    backend = backend or ReplayBackend(faults=scenario.faults, journal=workdir / "journal.jsonl")
    agent = build_agent(_config_for(config, scenario), backend, open_checkpointer(workdir / "cp.sqlite"),
                        profile=scenario.profile, model=model, model_name="offline-planner" if model is not None else None, specs=specs)
    started = time.perf_counter()
    result = start_run(agent, scenario.request, thread_id=f"golden-{scenario.id}")
    decisions = list(scenario.approvals)
    while result.status == "awaiting_approval":
        if not decisions:
            break  # judged as awaiting_approval: the scenario recorded fewer decisions than the agent asked for
        result = resume_run(agent, result.thread_id, decisions.pop(0))
    seconds = time.perf_counter() - started
    if result.trace is None:
        actual, answer, cost = [], "", 0.0
    else:
        actual, answer, cost = trajectory(result.trace), result.trace["answer"], result.trace["totals"]["opsfabric.cost.estimated_usd"]
    verdict = judge(scenario.expect.trajectory, actual, answer=answer, answer_checks=scenario.expect.answer,
                    outcome_checks={"status": scenario.expect.status, "stop_reason": scenario.expect.stop_reason,
                                    **({"approvals": scenario.expect.approvals} if scenario.expect.approvals is not None else {})},
                    observed={"status": result.status, "stop_reason": result.stop_reason, "approvals": approvals_of(result.trace)},
                    recorded_schemas=scenario.tool_schemas, current_schemas=tool_fingerprints(specs or TOOL_SPECS))
    return ScenarioRun(scenario, result, verdict, seconds, cost)


def run_suite(folder: Path, config: AgentsSettings, **kwargs: Any) -> list[ScenarioRun]:
    """Every scenario of ``folder``, each in its own temporary state."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="agent-suite-") as tmp:
        for path in scenario_files(folder):
            scenario = load_scenario(path)
            runs.append(run_scenario(scenario, config, Path(tmp) / scenario.id, **kwargs))
    return runs


def regressions(previous: dict[str, str], current: dict[str, str]) -> list[str]:
    """Scenarios that passed in the previous run and do not pass now (these fail the flow)."""
    return sorted(s for s, status in current.items() if previous.get(s) == "pass" and status != "pass")


# ---- recording ------------------------------------------------------------------------------------
def golden_from_run(scenario: Scenario, run: ScenarioRun) -> Scenario:
    """A scenario whose expectations are what ``run`` did (strict trajectory, exact arguments, outcomes)."""
    trace = run.result.trace or {}
    calls = [ExpectedCall(tool=c.name, args=c.args, outcome=c.outcome) for c in (trajectory(trace) if trace else [])]
    old = scenario.expect.trajectory.calls
    # keep the reviewed match rules of a step that is still the same tool at the same place
    calls = [c.model_copy(update={"match": old[i].match, "extra_args": old[i].extra_args, "id": old[i].id})
             if i < len(old) and old[i].tool == c.tool else c for i, c in enumerate(calls)]
    used = {c.tool for c in calls}
    expect = scenario.expect.model_copy(update={
        "status": run.result.status, "stop_reason": run.result.stop_reason, "approvals": approvals_of(trace),
        "trajectory": scenario.expect.trajectory.model_copy(update={"calls": calls}),
    })
    return scenario.model_copy(update={"expect": expect, "tool_schemas": {k: v for k, v in tool_fingerprints().items() if k in used}})


def dump_scenario(scenario: Scenario) -> str:
    """Readable YAML: defaults left out, except the trajectory mode (always said)."""
    data = scenario.model_dump(mode="json", exclude_defaults=True)
    spec = scenario.expect.trajectory
    trajectory_data = data.setdefault("expect", {}).setdefault("trajectory", {})
    calls = trajectory_data.get("calls", [])
    for call, model in zip(calls, spec.calls):
        if model.match:  # the rule kind is a discriminator: always written
            call["match"] = {k: rule.model_dump(mode="json") for k, rule in model.match.items()}
    data["expect"]["trajectory"] = {"mode": spec.mode, "calls": calls, **({"before": [list(p) for p in spec.before]} if spec.before else {})}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)


def record_candidate(path: Path, scenario: Scenario) -> Path:
    """Write ``scenario`` as ``<path stem>.candidate.yaml``; refuse if a candidate is already waiting.

    The text is written to a temporary file first and then hard-linked into place: the link fails if
    a candidate exists (two `record` runs cannot both write it), and a kill mid-write leaves only
    the temporary file, never a partial candidate.
    """
    import os
    import tempfile

    candidate = path.with_name(path.stem + CANDIDATE_SUFFIX)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(dump_scenario(scenario))
        try:
            os.link(tmp, candidate)
        except FileExistsError:
            raise GoldenError(f"{candidate} already exists", hint="approve or delete it first; goldens are never overwritten silently") from None
    finally:
        os.unlink(tmp)
    return candidate


def candidate_digest(path: Path) -> str:
    """Short SHA-256 of the candidate of golden ``path``: what `record` printed and `approve --sha` names."""
    import hashlib

    return hashlib.sha256(path.with_name(path.stem + CANDIDATE_SUFFIX).read_bytes()).hexdigest()[:12]


def approve_candidate(path: Path, expected_digest: str | None = None) -> Path:
    """Replace the golden ``path`` with its candidate.

    ``expected_digest`` (what `record` printed) binds the approval to the candidate that was reviewed:
    a candidate recorded again since then is refused.
    """
    candidate = path.with_name(path.stem + CANDIDATE_SUFFIX)
    if not candidate.exists():
        raise GoldenError(f"no candidate to approve for {path.name} ({candidate.name} does not exist)", hint="run `record` first")
    if expected_digest is not None and candidate_digest(path) != expected_digest:
        raise GoldenError(f"{candidate.name} changed since it was reviewed (sha {candidate_digest(path)}, approved {expected_digest})",
                          hint="review the candidate again and approve its current sha")
    load_scenario(candidate)  # a malformed candidate never replaces a golden
    candidate.replace(path)
    return path


def suite_digest(folder: Path) -> str:
    """MD5 over the scenario files (names and bytes): which goldens a run was judged against."""
    import hashlib

    h = hashlib.md5()
    for path in scenario_files(folder):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
