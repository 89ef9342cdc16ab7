"""Prefect's overhead on the ML pipeline: the same step functions, same data, called plainly vs as flows.

Each measurement runs in a fresh child process with a fresh state folder (MLflow store, runs), so
both sides do the same work: validate every file (concurrently, with the same number of threads on
both sides) → train + gate → monitor every batch, retraining + gating where the verdict says so →
score the last batch. Imports and data generation happen before the clock starts on both sides.
The Prefect side runs ``flows.ml_pipeline`` against a running Prefect server (how deployments and
workers run in production).

Rounds alternate which side runs first (timings on this machine vary by ±15% from run to run), and
both sides must reach the same outcome in every round: the same registered versions with the same
gate decisions, the same champion, the same retrain verdicts. A mismatch is an error, not a figure.

    python benchmarks/ml_overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.15


def run_plain(settings) -> list[bool]:
    """``flows.ml_pipeline`` step by step without Prefect: the same functions, in the same order, with the same threads."""
    from concurrent.futures import ThreadPoolExecutor

    from opsfabric.ml import champion as champions
    from opsfabric.ml import contract as data, monitoring, promotion, scoring, training
    from opsfabric.ml.lineage import lineage_for

    work = settings.state_dir / "plain"
    files, contract = data.generate_dataset(settings), data.load_contract(settings)
    # The flow maps validation over the thread-pool task runner: same pool size here.
    with ThreadPoolExecutor(max_workers=settings.orchestration.max_workers) as pool:
        list(pool.map(lambda path: data.validate_file(settings, path, contract, work / "validation"), files.values()))

    def train_and_gate(sets, lineage, run_name: str) -> None:
        candidate = training.train_and_log(settings, sets, contract, lineage=lineage, run_name=run_name)
        promotion.gate_and_register(settings, candidate, sets.evaluation, contract.spec, lineage=lineage)

    train_and_gate(training.reference_training_sets(settings, contract), lineage_for(settings, data_files=[files["reference"]]), "train-reference")
    verdicts = []
    batches = [path for name, path in files.items() if name != "reference"]
    for batch in batches:
        data.validate_file(settings, batch, contract, work / "monitor" / "validation", require_label=False)
        champion = champions.load_champion(settings)
        outcome = monitoring.monitor_batch(
            settings, batch, contract, work / "monitor", champion=champion, lineage=lineage_for(settings, data_files=[batch])
        )
        verdicts.append(outcome.decision.approved)
        if outcome.decision.approved:
            data.validate_file(settings, batch, contract, work / "retrain" / "validation", require_label=True)
            sets = training.retraining_sets(settings, contract, [batch])
            train_and_gate(sets, lineage_for(settings, data_files=[files["reference"], batch]), f"retrain-{batch.stem}")
    champion = champions.load_champion(settings)
    scoring.score_batch_file(champion.model, contract.spec, batches[-1], work / "scored.parquet", threshold=champion.decision_threshold)
    return verdicts


def run_prefect(settings, config_files: list[str]) -> list[bool]:
    from flows.ml_pipeline import ml_pipeline_flow

    result = ml_pipeline_flow(config_files)
    return [m["retrain"] for m in result["monitor"]]


def registry_outcome(settings) -> dict:
    """What both sides must agree on: versions with their gate decisions, and the champion."""
    from opsfabric import tracking
    from opsfabric.ml.registry import get_champion, model_versions

    client = tracking.mlflow_client(settings)
    name = settings.ml.registered_model
    champion = get_champion(client, name, settings.ml.champion_alias)
    return {
        "versions": [[ref.version, ref.decision] for ref in model_versions(client, name)],
        "champion": champion.version if champion else None,
    }


def child(mode: str, state_dir: str) -> None:
    from opsfabric.runtime_env import configure_runtime_env

    configure_runtime_env(Path(state_dir))
    overlay = Path(state_dir) / "overlay.yaml"
    overlay.write_text(f"state_dir: {state_dir}\n")
    # Warm imports on both sides so the clock measures the pipeline, not module loading.
    import evidently  # noqa: F401
    import mlflow  # noqa: F401
    import sklearn.ensemble  # noqa: F401

    import flows.ml_pipeline  # noqa: F401
    from opsfabric.ml.contract import generate_dataset
    from opsfabric.settings import load_settings

    settings = load_settings(str(overlay))
    generate_dataset(settings)  # exists after the first run: not timed on either side
    start = time.perf_counter()
    verdicts = run_plain(settings) if mode == "plain" else run_prefect(settings, [str(overlay)])
    seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "seconds": seconds, "retrain_verdicts": verdicts, **registry_outcome(settings)}))


def measure(mode: str, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as state:
        done = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--state", state],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_PORT": str(port)}
    prefect = Path(sys.executable).parent / "prefect"
    server = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    stop(server)
    raise RuntimeError("Prefect server did not start within 180 s")


def stop(server: subprocess.Popen) -> None:
    """Stop the server by its process id; SIGKILL if it ignores SIGTERM (it may, once idle)."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "prefect"])
    parser.add_argument("--state")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.state)
        return 0
    base_env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME") and not k.startswith("OPSFABRIC_")}
    times: dict[str, list[float]] = {"plain": [], "prefect": []}
    outcomes: list[dict] = []
    with tempfile.TemporaryDirectory() as home:
        server, url = start_server(Path(home))
        envs = {"plain": base_env, "prefect": {**base_env, "PREFECT_API_URL": url}}
        try:
            for round_no in range(args.rounds):
                order = ("plain", "prefect") if round_no % 2 == 0 else ("prefect", "plain")
                results = {mode: measure(mode, envs[mode]) for mode in order}
                for mode in order:
                    times[mode].append(results[mode]["seconds"])
                    outcomes.append(results[mode])
                print(
                    f"round {round_no + 1} ({order[0]} first): plain {results['plain']['seconds']:.2f} s, "
                    f"prefect {results['prefect']['seconds']:.2f} s",
                    flush=True,
                )
        finally:
            stop(server)
    reference = {k: outcomes[0][k] for k in ("versions", "champion", "retrain_verdicts")}
    mismatches = [o for o in outcomes if {k: o[k] for k in reference} != reference]
    plain, prefect = statistics.median(times["plain"]), statistics.median(times["prefect"])
    ratio = prefect / plain
    print(f"ML pipeline wall time over {args.rounds} rounds, order alternating (same steps, same data, fresh state each run)")
    print(f"  plain                       median {plain:7.2f} s  runs={[round(v, 2) for v in times['plain']]}")
    print(f"  prefect (running server)    median {prefect:7.2f} s  runs={[round(v, 2) for v in times['prefect']]}")
    print(f"  same outcome on both sides in every round: {'yes' if not mismatches else 'NO'}: {json.dumps(reference)}")
    print(f"goal <= {GOAL:.2f}x against a running server: {'met' if ratio <= GOAL else 'MISSED'} ({ratio:.3f}x)")
    if mismatches:
        print(f"MISMATCH: {json.dumps(mismatches)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
