"""Dev-only cross-check of the matcher against agentevals 0.0.9 (a dev extra, not a run-time dependency).

``make install`` installs the dev extras, so it runs there; an environment without agentevals skips it.
"""

from __future__ import annotations

import json
import random

import pytest

from opsfabric.agents.matching import ExpectedCall, ToolCall, TrajectorySpec, match_trajectory

agentevals_match = pytest.importorskip("agentevals.trajectory.match")
pytestmark = pytest.mark.unit

TOOLS = [("a", {}), ("b", {"x": 1}), ("b", {"x": 2}), ("c", {"q": "v"})]


def _messages(calls: list[tuple[str, dict]]) -> list[dict]:
    msgs: list[dict] = [{"role": "user", "content": "q"}]
    for i, (name, args) in enumerate(calls):
        msgs.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]})
        msgs.append({"role": "tool", "content": "ok", "tool_call_id": f"c{i}"})
    msgs.append({"role": "assistant", "content": "done"})
    return msgs


@pytest.mark.parametrize("mode", ["strict", "unordered", "subset", "superset"])
def test_same_verdicts_as_agentevals_on_random_trajectories(mode):
    rng = random.Random(7)
    evaluator = agentevals_match.create_trajectory_match_evaluator(trajectory_match_mode=mode)
    disagreements = []
    for _ in range(300):
        expected = [rng.choice(TOOLS) for _ in range(rng.randint(0, 3))]
        actual = [rng.choice(TOOLS) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.3:
            actual = list(expected) if rng.random() < 0.5 else list(reversed(expected))
        theirs = bool(evaluator(outputs=_messages(actual), reference_outputs=_messages(expected))["score"])
        ours, _ = match_trajectory(TrajectorySpec(mode=mode, calls=[ExpectedCall(tool=n, args=a) for n, a in expected]),
                                   [ToolCall(n, a) for n, a in actual])
        if ours != theirs:
            disagreements.append((expected, actual, ours, theirs))
    assert disagreements == []
