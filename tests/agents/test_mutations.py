"""Mutation check: deliberately changed agents; the golden suite must catch each and name what changed.

Each mutant is a real change to the agent (its planner, its profile configuration, or its tool
specs), run through the same graph and the same suite. Each test replays only the scenarios that
exercise the mutated behaviour (the whole suite is the evals test in test_golden.py) and asserts
both that some scenario stops passing and that the verdict names the change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import Field, create_model

from opsfabric.agents.golden import load_scenario, run_scenario
from opsfabric.agents.planner import DISCLOSURE, OfflinePlanner, Plan, Step
from opsfabric.agents.settings import AgentsSettings, ProfileSettings, READ_ONLY_TOOLS
from opsfabric.agents.tools import SPECS_BY_NAME, TOOL_SPECS, CompareModelVersionsArgs
from opsfabric.settings import PROJECT_ROOT

pytestmark = pytest.mark.flows
GOLDEN = PROJECT_ROOT / "data" / "golden" / "agent"


class MutantPlanner(OfflinePlanner):
    """The offline planner with one deliberate change to its plans or answers."""

    mutation: str = "none"

    def plan(self, request: str) -> Plan:
        plan = super().plan(request)
        if plan.abstain_reason:
            return plan
        steps = list(plan.steps)
        if self.mutation == "reorder" and len(steps) > 1:
            steps = [dataclasses.replace(s, conditional=False) for s in reversed(steps)]
        elif self.mutation == "argument":
            steps = [dataclasses.replace(s, args={k: (v + 1 if isinstance(v, int) else v) for k, v in s.args.items()}) for s in steps]
        elif self.mutation == "extra_call":
            steps = [*steps, Step("index_status", {}, "extra", False, 1.0)]
        return Plan(steps=steps)

    def decide(self, messages):
        message = super().decide(messages)
        if self.mutation == "answer" and not message.tool_calls:
            message = message.model_copy(update={"content": str(message.content).replace(DISCLOSURE, "Done.")})
        return message


def replay(ids: list[str], tmp_path: Path, *, config: AgentsSettings | None = None, mutation: str | None = None, specs=None):
    model = MutantPlanner(mutation=mutation) if mutation else None
    return {sid: run_scenario(load_scenario(GOLDEN / f"{sid}.yaml"), config or AgentsSettings(), tmp_path / sid, model=model, specs=specs).verdict
            for sid in ids}


def failing(verdicts) -> dict[str, str]:
    return {sid: v.render_diff() for sid, v in verdicts.items() if not v.passed}


def test_unmutated_planner_subclass_passes(tmp_path):
    # the harness itself changes nothing: the same scenarios pass with the un-mutated subclass
    assert failing(replay(["compound_three_steps", "compare_2_3", "promote_approved"], tmp_path, mutation="none")) == {}


def test_reordered_tools_are_caught(tmp_path):
    bad = failing(replay(["compound_status_and_champion", "drift_then_retrain_approved", "compound_three_steps"], tmp_path, mutation="reorder"))
    # unordered mode tolerates the order on purpose; strict and partial-order goldens catch it
    assert set(bad) == {"drift_then_retrain_approved", "compound_three_steps"}
    assert "strict: the same calls in a different order" in bad["drift_then_retrain_approved"]
    assert "first divergence: expected step None, actual step 0: extra" in bad["drift_then_retrain_approved"]
    assert "partial_order: no matching honours the order pairs" in bad["compound_three_steps"]


def test_changed_argument_is_caught(tmp_path):
    bad = failing(replay(["compare_2_3", "promote_approved"], tmp_path, mutation="argument"))
    assert set(bad) == {"compare_2_3", "promote_approved"}
    assert "argument version_a: 3 != expected 2" in bad["compare_2_3"]
    assert "argument version: 5 != expected 4" in bad["promote_approved"]


def test_extra_call_is_caught(tmp_path):
    bad = failing(replay(["champion_info", "compound_superset", "abstain_off_topic"], tmp_path, mutation="extra_call"))
    # superset goldens allow extra calls on purpose; abstentions make no plan to extend
    assert set(bad) == {"champion_info"}
    assert "+ " in bad["champion_info"] and "not in the golden trajectory" in bad["champion_info"]


def test_changed_answer_is_caught(tmp_path):
    bad = failing(replay(["index_status", "compare_2_3"], tmp_path, mutation="answer"))
    assert set(bad) == {"index_status", "compare_2_3"}
    assert "answer lacks 'offline planner'" in bad["index_status"]


def test_dropped_approval_is_caught(tmp_path):
    operator = ProfileSettings.model_construct(  # bypasses the validator on purpose: this is the mutant
        tools=[t.name for t in TOOL_SPECS], approval_required=[], budget=AgentsSettings().profiles["operator"].budget)
    config = AgentsSettings().model_copy(update={"profiles": {**AgentsSettings().profiles, "operator": operator}})
    bad = failing(replay(["promote_approved", "retrain_denied"], tmp_path, config=config))
    assert set(bad) == {"promote_approved", "retrain_denied"}
    assert "approvals [] != expected ['approve']" in bad["promote_approved"]
    assert "outcome 'ok' != expected 'denied'" in bad["retrain_denied"]


def test_loosened_guardrails_are_caught(tmp_path):
    base = AgentsSettings()
    loose_viewer = ProfileSettings(tools=[*READ_ONLY_TOOLS, "promote_model_version"])
    config = base.model_copy(update={"profiles": {**base.profiles, "viewer": loose_viewer}, "loop_max_repeats": 6})
    bad = failing(replay(["viewer_outside_allowlist", "loop_registry_down"], tmp_path, config=config))
    assert set(bad) == {"viewer_outside_allowlist", "loop_registry_down"}
    assert "outcome 'awaiting approval' != expected 'refused: allowlist'" in bad["viewer_outside_allowlist"]
    assert "!= expected 'refused: loop'" in bad["loop_registry_down"]


def test_loosened_abstention_is_caught(tmp_path):
    class Reckless(OfflinePlanner):
        min_similarity: float = -1.0
        min_margin: float = 0.0
        min_similarity_risky: float = -1.0

    verdicts = {sid: run_scenario(load_scenario(GOLDEN / f"{sid}.yaml"), AgentsSettings(), tmp_path / sid, model=Reckless()).verdict
                for sid in ["abstain_off_topic", "abstain_ambiguous"]}
    bad = failing(verdicts)
    assert set(bad) == {"abstain_off_topic", "abstain_ambiguous"}
    assert "outcome 'completed' != expected 'asked to clarify'" in bad["abstain_ambiguous"] or "awaiting approval" in bad["abstain_ambiguous"]


def test_changed_tool_description_is_reported_as_schema_drift(tmp_path):
    specs = tuple(dataclasses.replace(s, description=s.description + " Fast.") if s.name == "index_status" else s for s in TOOL_SPECS)
    verdicts = replay(["index_status", "compare_2_3"], tmp_path, specs=specs)
    assert verdicts["compare_2_3"].passed  # a golden that did not use the tool is unaffected
    assert verdicts["index_status"].status == "schema_drift"
    assert verdicts["index_status"].drift[0].startswith("tool index_status: description changed")


def test_changed_tool_schema_is_reported_as_schema_drift(tmp_path):
    wider = create_model("CompareModelVersionsArgs", __base__=CompareModelVersionsArgs,
                         version_a=(int, Field(ge=1, le=100, description="First registered model version number.")))
    specs = tuple(dataclasses.replace(s, args_model=wider) if s.name == "compare_model_versions" else s for s in TOOL_SPECS)
    verdicts = replay(["compare_2_3"], tmp_path, specs=specs)
    assert verdicts["compare_2_3"].status == "schema_drift"
    assert verdicts["compare_2_3"].drift == (
        f"tool compare_model_versions: parameters changed ({SPECS_BY_NAME['compare_model_versions'].fingerprint['parameters']} -> "
        f"{dataclasses.replace(SPECS_BY_NAME['compare_model_versions'], args_model=wider).fingerprint['parameters']})",)
