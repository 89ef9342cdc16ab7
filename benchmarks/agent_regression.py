"""The agent's golden suite offline: wall time, scenarios/s, where the time goes, and per-request overhead.

* Suite wall time (goal <= 60 s offline on 2 cores), cold (first run in the process: MiniLM load
  and every embedding computed) and warm (embeddings cached), and scenarios per second.
* Split of the warm suite's time: decision-making (the offline planner's model calls), tools (the
  replay backend), orchestration (everything else: LangGraph, middleware, SQLite checkpoints,
  approvals, trace building), from the per-event durations the traces record.
* Per-request overhead: for every scenario that completed, the agent's run vs calling the same
  tools directly on the same backend, alternating which goes first, as a ratio in one run.

    python benchmarks/agent_regression.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOAL_SECONDS = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of agent vs direct calls")
    args = parser.parse_args()

    from opsfabric.runtime_env import configure_runtime_env

    configure_runtime_env()
    from opsfabric.agents.golden import load_scenario, run_scenario, run_suite, scenario_files
    from opsfabric.agents.replay import ReplayBackend
    from opsfabric.agents.settings import AgentsSettings
    from opsfabric.agents.tools import SPECS_BY_NAME, validate_args
    from opsfabric.agents.trace import trajectory

    golden = ROOT / "data" / "golden" / "agent"
    config = AgentsSettings()

    started = time.perf_counter()
    cold_runs = run_suite(golden, config)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    warm_runs = run_suite(golden, config)
    warm = time.perf_counter() - started
    n = len(warm_runs)
    assert [r.verdict.status for r in cold_runs] == [r.verdict.status for r in warm_runs], "verdicts changed between runs"

    decision = sum(r.result.trace["totals"]["model_ms"] for r in warm_runs if r.result.trace) / 1000
    tools = sum(r.result.trace["totals"]["tool_ms"] for r in warm_runs if r.result.trace) / 1000
    scenario_time = sum(r.seconds for r in warm_runs)
    orchestration = scenario_time - decision - tools
    setup = warm - scenario_time  # graph compile, checkpointer setup, file loading per scenario

    # per-request overhead: the agent vs the same successful tool calls made directly
    completed = [(load_scenario(p), r) for p, r in zip(scenario_files(golden), warm_runs)
                 if r.result.status == "completed" and r.result.trace and all(c.outcome == "ok" for c in trajectory(r.result.trace))]
    agent_times: list[float] = []
    direct_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        for round_no in range(args.rounds):
            order = ("agent", "direct") if round_no % 2 == 0 else ("direct", "agent")
            for side in order:
                total = 0.0
                for i, (scenario, run) in enumerate(completed):
                    if side == "agent":
                        total += run_scenario(scenario, config, Path(tmp) / f"{round_no}-{i}").seconds
                    else:
                        backend = ReplayBackend(faults=scenario.faults)
                        t0 = time.perf_counter()
                        for call in trajectory(run.result.trace):  # validated like the agent does (defaults filled)
                            getattr(backend, call.name)(**validate_args(SPECS_BY_NAME[call.name], call.args))
                        total += time.perf_counter() - t0
                (agent_times if side == "agent" else direct_times).append(total)
    agent_s, direct_s = statistics.median(agent_times), statistics.median(direct_times)

    print(f"scenarios: {n}; verdicts: {sum(r.verdict.passed for r in warm_runs)} pass")
    print(f"suite wall time: cold {cold:.1f} s (MiniLM load + embeddings), warm {warm:.1f} s; goal <= {GOAL_SECONDS:.0f} s: "
          f"{'met' if cold <= GOAL_SECONDS else 'MISSED'}")
    print(f"scenarios/s: cold {n / cold:.2f}, warm {n / warm:.2f}")
    print(f"warm split: decision-making {decision:.2f} s ({decision / warm:.0%}), tools {tools:.3f} s ({tools / warm:.1%}), "
          f"orchestration {orchestration:.2f} s ({orchestration / warm:.0%}), per-scenario setup {setup:.2f} s ({setup / warm:.0%})")
    print(f"per-request overhead ({len(completed)} completed requests, median of {args.rounds} alternating rounds): "
          f"agent {agent_s * 1000 / len(completed):.1f} ms/request vs direct tool calls {direct_s * 1000 / len(completed):.3f} ms/request "
          f"(ratio {agent_s / direct_s:.0f}x; absolute overhead {(agent_s - direct_s) * 1000 / len(completed):.1f} ms/request)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
