"""The offline planner as a behaviour: routing floor, never the wrong tool, deterministic."""

from __future__ import annotations

import pytest

from opsfabric.agents.planner import make_plan
from opsfabric.agents.tools import TOOL_SPECS

TOOLS = [{"name": s.name, "description": s.description, "parameters": s.parameters} for s in TOOL_SPECS]

# (request, the tool a person would pick; None: the planner must abstain)
CALIBRATION = [
    ("search the docs for the rollback procedure", "search_docs"),
    ("what does the documentation say about the Python Software Foundation", "search_docs"),
    ("look up the runbook for drift", "search_docs"),
    ("what do the docs say about retraining", "search_docs"),
    ("find in the knowledge base how promotion works", "search_docs"),
    ("search the documentation for the PSF", "search_docs"),
    ("what is the champion model?", "champion_info"),
    ("show the champion model and its scores", "champion_info"),
    ("which model version is the champion?", "champion_info"),
    ("compare model versions 2 and 3", "compare_model_versions"),
    ("compare version 1 vs version 4", "compare_model_versions"),
    ("how does version 2 differ from version 3?", "compare_model_versions"),
    ("check drift for batch 2", "latest_drift_verdict"),
    ("is there drift in the latest batch?", "latest_drift_verdict"),
    ("what was the drift verdict for batch_03", "latest_drift_verdict"),
    ("show the index status", "index_status"),
    ("which index versions exist and what are their scores?", "index_status"),
    ("where does the live alias point?", "index_status"),
    ("retrain the model on batch 3", "trigger_retraining"),
    ("start a retraining on batch_04", "trigger_retraining"),
    ("roll back the index to docs-v0002", "rollback_index_alias"),
    ("roll back the live index alias", "rollback_index_alias"),
    ("revert the search index to the previous version", "rollback_index_alias"),
    ("promote model version 4", "promote_model_version"),
    ("make version 2 the champion", "promote_model_version"),
    ("what is the weather in Paris?", None),
    ("tell me a joke", None),
    ("scores", None),
    ("the model", None),
    ("do something", None),
    ("delete all runs", None),
    ("When was the PSF formed?", None),
]


def _first_tool(request: str) -> str | None:
    plan = make_plan(request, TOOLS, min_similarity=0.30, min_margin=0.02, min_similarity_risky=0.45)
    return None if plan.abstain_reason else plan.steps[0].tool


@pytest.mark.evals
def test_planner_never_picks_a_wrong_tool_and_routes_most_requests():
    got = {request: _first_tool(request) for request, _ in CALIBRATION}
    wrong = [(r, want, got[r]) for r, want in CALIBRATION if got[r] is not None and got[r] != want]
    assert wrong == [], "the planner acted with the wrong tool (it must abstain instead)"
    right = sum(got[r] == want for r, want in CALIBRATION)
    # measured 29/32 (three safe abstentions on paraphrases); the floor leaves no room for a misroute
    assert right / len(CALIBRATION) >= 0.85, {r: (want, got[r]) for r, want in CALIBRATION if got[r] != want}


@pytest.mark.unit
def test_planner_is_deterministic():
    from opsfabric.agents.planner import _embed_one

    _embed_one.cache_clear()
    first = [make_plan(r, TOOLS, min_similarity=0.30, min_margin=0.02, min_similarity_risky=0.45) for r, _ in CALIBRATION]
    _embed_one.cache_clear()  # embeddings recomputed, not served from the cache
    again = [make_plan(r, TOOLS, min_similarity=0.30, min_margin=0.02, min_similarity_risky=0.45) for r, _ in CALIBRATION]
    assert [(p.abstain_reason, [(s.tool, s.args, s.score) for s in p.steps]) for p in first] == \
           [(p.abstain_reason, [(s.tool, s.args, s.score) for s in p.steps]) for p in again]
