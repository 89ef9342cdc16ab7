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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opsfabric.agents.errors import GoldenError
from opsfabric.agents.matching import ArgRule, AnswerChecks, ExactRule, ExpectedCall, TrajectorySpec, Verdict, judge, match_value
from opsfabric.agents.settings import AgentsSettings, BudgetSettings
from opsfabric.agents.tools import TOOL_SPECS, tool_fingerprints
from opsfabric.agents.trace import trajectory

CANDIDATE_SUFFIX = ".candidate.yaml"


OUTCOME_HELP = "completed | awaiting approval | asked to clarify | refused: <rule>"
_OUTCOME = r"^(completed|awaiting approval|asked to clarify|refused: [a-z_:]+)$"


def outcome_class(status: str, stop_reason: str | None, calls: int) -> str:
    """The run's outcome class, the same for every model.

    ``asked to clarify`` covers an abstention (the offline planner) and a reply without any tool
    call (a language model asking back or declining): in both the agent did nothing and said so.
    ``refused: <rule>`` is a guardrail or budget stop, named by its rule. A model reply that was none
    of the expected shapes is ``model output unusable``, a class no golden can expect.
    """
    if status == "awaiting_approval":
        return "awaiting approval"
    if status == "stopped" and stop_reason == "model_output":
        return "model output unusable"  # a reply none of the schema's shapes: matches no golden, ever
    if status == "stopped":
        return f"refused: {stop_reason}"
    if status == "abstained" or (status == "completed" and calls == 0):
        return "asked to clarify"
    return "completed"


class ApprovalStep(BaseModel):
    """A recorded human decision, keyed by the action it answers (tool and arguments), never by position."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments the pending action must have (rules in `match`).")
    match: dict[str, ArgRule] = Field(default_factory=dict)
    decision: Literal["approve", "reject", "edit"]
    message: str | None = Field(default=None, description="reject: the reason given to the agent.")
    edited_args: dict[str, Any] | None = Field(default=None, description="edit: the arguments to run instead.")

    def matches(self, tool: str, args: dict[str, Any]) -> bool:
        if tool != self.tool:
            return False
        keys = set(self.args) | set(self.match)
        return all(match_value(self.match.get(k, ExactRule()), self.args.get(k), args.get(k), present=k in args) is None for k in keys)

    def as_decision(self) -> dict[str, Any]:
        if self.decision == "approve":
            return {"type": "approve"}
        if self.decision == "reject":
            return {"type": "reject", "message": self.message or "denied in the golden scenario"}
        return {"type": "edit", "edited_action": {"name": self.tool, "args": dict(self.edited_args or {})}}


class ModelExpectations(BaseModel):
    """What legitimately differs for one decision model (its wording, an abstention only it makes)."""

    model_config = ConfigDict(extra="forbid")

    outcome: str | None = Field(default=None, pattern=_OUTCOME)
    approvals: list[str] | None = None
    trajectory: TrajectorySpec | None = None
    answer: AnswerChecks = Field(default_factory=AnswerChecks, description="Added to the shared answer checks.")


class Expectations(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: str = Field(pattern=_OUTCOME, description=OUTCOME_HELP)
    approvals: list[str] | None = Field(default=None, description="Human decisions in order (approve/edit/deny); None: not checked.")
    trajectory: TrajectorySpec
    answer: AnswerChecks = Field(default_factory=AnswerChecks)

    def for_model(self, section: ModelExpectations | None) -> "Expectations":
        """The shared expectations with one model's section applied (its answer checks are added)."""
        if section is None:
            return self
        answer = AnswerChecks(contains=[*self.answer.contains, *section.answer.contains],
                              not_contains=[*self.answer.not_contains, *section.answer.not_contains],
                              regex=[*self.answer.regex, *section.answer.regex])
        return self.model_copy(update={
            "outcome": section.outcome or self.outcome,
            "approvals": section.approvals if section.approvals is not None else self.approvals,
            "trajectory": section.trajectory or self.trajectory, "answer": answer})


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
    approvals: list[ApprovalStep] = Field(default_factory=list, description="Decisions, each for the pending action it matches.")
    expect: Expectations
    models: dict[str, ModelExpectations] = Field(default_factory=dict, description="Per decision model (its trace name): what differs for it.")
    tool_schemas: dict[str, dict[str, str]] = Field(default_factory=dict)

    def expectations(self, model_name: str) -> Expectations:
        return self.expect.for_model(self.models.get(model_name))


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
    outcome: str = ""


def _config_for(base: AgentsSettings, scenario: Scenario) -> AgentsSettings:
    if scenario.budget is None:
        return base
    profiles = dict(base.profiles)
    profiles[scenario.profile] = profiles[scenario.profile].model_copy(update={"budget": scenario.budget})
    return base.model_copy(update={"profiles": profiles})


def approvals_of(trace: dict[str, Any] | None) -> list[str]:
    """The human decisions of a trace, in order."""
    return [e["attributes"]["opsfabric.approval.decision"] for e in (trace or {}).get("events", []) if e["kind"] == "approval"]


def _with_seed(config: AgentsSettings, seed: int | None) -> AgentsSettings:
    if seed is None or not hasattr(config.model, "seed"):
        return config  # the offline planner has no seed: it is deterministic
    return config.model_copy(update={"model": config.model.model_copy(update={"seed": seed})})


def run_scenario(scenario: Scenario, config: AgentsSettings, workdir: Path, *, backend: Any = None,
                 model: Any = None, specs: Any = None, seed: int | None = None) -> ScenarioRun:
    """Replay one scenario on a fresh checkpointer (replay backend unless one is given) and judge it.

    Each pending action is answered by the recorded decision that matches its tool and arguments; a
    pending action that none matches (or an edit its tool refuses) ends the run with a ``fail``
    verdict that names it, never an exception. ``seed`` is sent to a language model (trial ``i`` of
    ``K`` uses ``S + i``); ``model`` and ``specs`` replace the decision model and the tool specs
    (mutation tests).
    """
    from opsfabric.agents.agent import build_agent, open_checkpointer, resume_run, start_run
    from opsfabric.agents.errors import ToolArgumentError
    from opsfabric.agents.matching import canonical_json
    from opsfabric.agents.replay import ReplayBackend

    workdir.mkdir(parents=True, exist_ok=True)
    backend = backend or ReplayBackend(faults=scenario.faults, journal=workdir / "journal.jsonl")
    agent = build_agent(_with_seed(_config_for(config, scenario), seed), backend, open_checkpointer(workdir / "cp.sqlite"),
                        profile=scenario.profile, model=model, model_name="offline-planner" if model is not None else None, specs=specs)
    started = time.perf_counter()
    result = start_run(agent, scenario.request, thread_id=f"golden-{scenario.id}")
    steps, problems = list(scenario.approvals), []
    while result.status == "awaiting_approval":
        pending = result.pending[0]
        step = next((s for s in steps if s.matches(pending.tool, pending.args)), None)
        if step is None:
            recorded = ", ".join(f"{s.tool} {canonical_json(s.args)}" for s in steps) or "none left"
            problems.append(f"pending action {pending.tool} {canonical_json(pending.args)} matches no recorded decision (recorded: {recorded})")
            break
        steps.remove(step)
        try:
            result = resume_run(agent, result.thread_id, step.as_decision(), expected_interrupt_id=pending.interrupt_id)
        except ToolArgumentError as exc:
            problems.append(f"the recorded edit of {pending.tool} was refused: {exc}")
            break
    seconds = time.perf_counter() - started
    if result.trace is None:
        actual, answer, cost = [], "", 0.0
    else:
        actual, answer, cost = trajectory(result.trace), result.trace["answer"], result.trace["totals"]["opsfabric.cost.estimated_usd"]
    expect = scenario.expectations(agent.model_name)
    outcome = outcome_class(result.status, result.stop_reason, len(actual))
    verdict = judge(expect.trajectory, actual, answer=answer, answer_checks=expect.answer,
                    outcome_checks={"outcome": expect.outcome, **({"approvals": expect.approvals} if expect.approvals is not None else {})},
                    observed={"outcome": outcome, "approvals": approvals_of(result.trace)},
                    recorded_schemas=scenario.tool_schemas, current_schemas=tool_fingerprints(specs or TOOL_SPECS),
                    extra_reasons=problems)
    return ScenarioRun(scenario, result, verdict, seconds, cost, outcome)


def is_deterministic(config: AgentsSettings) -> bool:
    """The offline planner has one answer per request: one trial is its whole distribution."""
    return not hasattr(config.model, "seed")


def run_trials(scenario: Scenario, config: AgentsSettings, workdir: Path, *, trials: int = 1, seed: int = 0,
               max_trials: int | None = None, threshold: float | None = None, min_trials: int = 3, **kwargs: Any) -> Any:
    """``trials`` runs of one scenario with seeds ``seed .. seed+trials-1`` (one run for a deterministic model).

    With ``max_trials``, up to that many runs, stopping once at least ``min_trials`` ran and the
    Wilson interval of the pass rate lies wholly above or below ``threshold`` (the gate's
    threshold for this scenario). Returns :class:`opsfabric.agents.trials.ScenarioTrials`.
    """
    from opsfabric.agents.trials import early_decision, summarise_trials

    deterministic = is_deterministic(config)
    planned = 1 if deterministic else (max_trials or trials)
    runs, seeds, stopped = [], [], None
    for i in range(planned):
        trial_seed = None if deterministic else seed + i
        runs.append(run_scenario(scenario, config, workdir / f"trial-{i}", seed=trial_seed, **kwargs))
        seeds.append(trial_seed)
        if max_trials and threshold is not None and len(runs) >= min_trials and len(runs) < planned:
            stopped = early_decision(sum(r.verdict.passed for r in runs), len(runs), threshold)
            if stopped:
                break
    return summarise_trials(scenario.id, runs, seeds, planned, stopped)


def run_suite(folder: Path, config: AgentsSettings, **kwargs: Any) -> list[ScenarioRun]:
    """Every scenario of ``folder``, each in its own temporary state."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="agent-suite-") as tmp:
        for path in scenario_files(folder):
            scenario = load_scenario(path)
            runs.append(run_scenario(scenario, config, Path(tmp) / scenario.id, **kwargs))
    return runs


# ---- recording ------------------------------------------------------------------------------------
def approval_steps_of(trace: dict[str, Any] | None, previous: list[ApprovalStep]) -> list[ApprovalStep]:
    """The decisions a trace records, as approval steps (a previous step for the same tool keeps its rules and message)."""
    calls = {e["attributes"]["gen_ai.tool.name"]: e["attributes"].get("gen_ai.tool.call.arguments", {})
             for e in (trace or {}).get("events", []) if e["kind"] == "tool_call"}
    steps, left = [], list(previous)
    for e in (trace or {}).get("events", []):
        if e["kind"] != "approval":
            continue
        a = e["attributes"]
        tool, decision = a["gen_ai.tool.name"], {"approve": "approve", "deny": "reject", "edit": "edit"}[a["opsfabric.approval.decision"]]
        old = next((p for p in left if p.tool == tool and p.decision == decision), None)
        if old is not None:
            left.remove(old)
            steps.append(old)
            continue
        steps.append(ApprovalStep(tool=tool, args={k: v for k, v in calls.get(tool, {}).items() if k != "reason"}, decision=decision,
                                  message=a.get("opsfabric.approval.reason"), edited_args=a.get("opsfabric.approval.edited_arguments")))
    return steps


def golden_from_run(scenario: Scenario, run: ScenarioRun) -> Scenario:
    """A scenario whose shared expectations are what ``run`` did (trajectory, outcome, decisions).

    The reviewed match rules of a step that is still the same tool at the same place are kept, and
    so are the per-model sections and the answer checks (facts a reviewer chose; they are not
    re-derived from one sample's wording).
    """
    trace = run.result.trace or {}
    calls = [ExpectedCall(tool=c.name, args=c.args, outcome=c.outcome) for c in (trajectory(trace) if trace else [])]
    old = scenario.expect.trajectory.calls
    calls = [c.model_copy(update={"match": old[i].match, "extra_args": old[i].extra_args, "id": old[i].id})
             if i < len(old) and old[i].tool == c.tool else c for i, c in enumerate(calls)]
    used = {c.tool for c in calls}
    expect = scenario.expect.model_copy(update={
        "outcome": run.outcome or outcome_class(run.result.status, run.result.stop_reason, len(calls)),
        "approvals": approvals_of(trace),
        "trajectory": scenario.expect.trajectory.model_copy(update={"calls": calls}),
    })
    return scenario.model_copy(update={"expect": expect, "approvals": approval_steps_of(trace, scenario.approvals),
                                       "tool_schemas": {k: v for k, v in tool_fingerprints().items() if k in used}})


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
    for step, model in zip(data.get("approvals", []), scenario.approvals):
        if model.match:
            step["match"] = {k: rule.model_dump(mode="json") for k, rule in model.match.items()}
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
