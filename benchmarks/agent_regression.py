"""The agent's golden suite offline: wall time, scenarios/s, where the time goes, and per-request overhead.

* Suite wall time (goal <= 60 s offline on 2 cores), cold (first run in the process: MiniLM load
  and every embedding computed) and warm (embeddings cached), and scenarios per second.
* Split of the warm suite's time: decision-making (the offline planner's model calls), tools (the
  replay backend), orchestration (everything else: LangGraph, middleware, SQLite checkpoints,
  approvals, trace building), from the per-event durations the traces record.
* Per-request overhead: for every scenario that completed, the agent's run vs calling the same
  tools directly on the same backend, alternating which goes first, as a ratio in one run.
* K trials (``--local-model``): suite wall time at K=1 and K=5 on the offline planner (deterministic:
  it runs once whatever K, by design) and on the local model (SmolLM2-135M sampling at temperature
  0.7, a real llama-cpp-python server started here), and adaptive sampling (``--max-trials 10``,
  thresholds from the K=5 run as baseline): trials used against the 10 x scenarios planned.

    python benchmarks/agent_regression.py [--rounds 3] [--local-model [--scenarios N]]
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
    parser.add_argument("--local-model", action="store_true", help="also time K=1/5 and adaptive sampling on the local model (minutes)")
    parser.add_argument("--scenarios", type=int, default=None, help="with --local-model: only the first N scenarios (default all)")
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
    if args.local_model:
        trials_section(golden, args.scenarios)
    return 0


def trials_section(golden: Path, limit: int | None) -> None:
    """Suite wall time at K=1 and K=5 (planner, local model) and the trials adaptive sampling saves."""
    from opsfabric.agents.golden import load_scenario, run_trials, scenario_files
    from opsfabric.agents.regression import gate_policy, thresholds
    from opsfabric.agents.settings import AgentsSettings
    from opsfabric.llm.launcher import start_server
    from opsfabric.settings import load_settings

    def free_port() -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    scenarios = [load_scenario(p) for p in scenario_files(golden)][:limit]

    runs = iter(range(1_000_000))

    def suite(config, k, tmp, **kwargs):
        started, n = time.perf_counter(), next(runs)  # a fresh folder (and checkpointer) per suite run
        results = [run_trials(sc, config, Path(tmp) / f"{n}-{k}-{sc.id}", trials=k, seed=0, **kwargs.get(sc.id, {})) for sc in scenarios]
        return time.perf_counter() - started, results

    planner = AgentsSettings()
    with tempfile.TemporaryDirectory(prefix="agent-bench-k-") as tmp:
        for k in (1, 5):
            seconds, results = suite(planner, k, tmp)
            print(f"offline planner, K={k}: {seconds:.1f} s for {len(scenarios)} scenarios ({sum(r.trials for r in results)} runs: "
                  "deterministic, one run per scenario whatever K)")
        settings = load_settings("configs/profiles/local-llm.yaml", "configs/profiles/local-llm-sampled.yaml", state_dir=Path(tmp) / "state",
                                 llm={"server": {"port": free_port()}})
        server = start_server(settings)
        try:
            config = settings.agents
            labels = server.aliases[config.model.model]
            print(f"local model: {labels['file']} sha256:{labels['sha256'][:16]}, temperature {config.model.temperature}, "
                  f"cache_warmup {config.model.cache_warmup}, 2 shared cores")
            by_k = {}
            for k in (1, 5):
                seconds, results = suite(config, k, tmp)
                by_k[k] = results
                passes = sum(r.passes for r in results)
                print(f"local model, K={k}: {seconds:.1f} s for {len(scenarios)} scenarios, {sum(r.trials for r in results)} trials "
                      f"({seconds / max(1, sum(r.trials for r in results)):.2f} s/trial), {passes} passing trials, "
                      f"flaky scenarios {sum(r.flaky for r in results)}")
            baseline = {r.scenario: (r.passes, r.trials) for r in by_k[5]}
            limits = thresholds(baseline, gate_policy(config))
            per = {sc.id: {"max_trials": 10, "threshold": limits.get(sc.id, config.regression.new_floor)} for sc in scenarios}
            seconds, results = suite(config, 10, tmp, **per)
            used, planned = sum(r.trials for r in results), sum(r.planned for r in results)
            print(f"adaptive sampling, up to 10 trials (thresholds: baseline K=5 rate - min_effect, or the new-scenario floor): "
                  f"{used} of {planned} trials used, {planned - used} saved ({(planned - used) / planned:.0%}), {seconds:.1f} s; "
                  f"stopped early: {sum(1 for r in results if r.stopped_early)} scenarios "
                  f"({sum(1 for r in results if r.stopped_early == 'below')} below, {sum(1 for r in results if r.stopped_early == 'above')} above)")
        finally:
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
