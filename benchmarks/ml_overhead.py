"""Prefect's overhead on the ML pipeline: the same step functions, same data, called plainly vs as flows.

Each measurement runs in a fresh child process with a fresh state folder (MLflow store, runs), so
both sides do the same work: generate → validate all → train + gate → monitor every batch
(retraining where the verdict says so) → score the last batch. Imports are done before the clock
starts on both sides. Prefect is measured two ways:

* ``server``: against a running Prefect server (how deployments and workers run in production);
* ``ephemeral``: no PREFECT_API_URL, so Prefect starts a temporary local server inside the run
  (what `make run` does on a fresh machine); its start-up is part of the time.

    python benchmarks/ml_overhead.py [--repeats 2]
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


def run_plain(config_files: list[str]) -> dict:
    """The pipeline's steps in the flow's order, without Prefect."""
    from opsfabric.ml import steps
    from opsfabric.settings import load_settings

    settings = load_settings(*config_files)
    work = settings.state_dir / "plain"
    files = steps.generate_dataset(settings)
    contract = steps.load_contract(settings)
    for path in files.values():
        steps.validate_file(settings, path, contract, work / "validation")
    lineage = steps.lineage_for(settings, data_files=[files["reference"]])
    train, evaluation = steps.reference_training_sets(settings, contract)
    candidate = steps.train_and_log(settings, train, evaluation, contract, lineage=lineage, run_name="plain", work_dir=work / "train")
    steps.gate_and_register(settings, candidate, contract, lineage=lineage)
    retrains = 0
    for batch in [settings.path(b) for b in settings.dataset.batches]:
        steps.validate_file(settings, batch, contract, work / "validation", require_label=False)
        model, version, score = steps.load_champion(settings)
        outcome = steps.monitor_batch(
            settings, batch, contract, work / "monitor", model=model, champion_version=version, champion_reference_score=score, lineage=lineage
        )
        if outcome.decision.approved:
            retrains += 1
            steps.validate_file(settings, batch, contract, work / "validation", require_label=True)
            train, evaluation = steps.retraining_sets(settings, contract, [batch])
            candidate = steps.train_and_log(settings, train, evaluation, contract, lineage=lineage, run_name="plain-retrain", work_dir=work / "retrain")
            steps.gate_and_register(settings, candidate, contract, lineage=lineage)
    model, version, _ = steps.load_champion(settings)
    last = settings.path(settings.dataset.batches[-1])
    steps.score_batch_file(settings, model, contract, last, work / "scored.parquet")
    return {"retrains": retrains, "champion": version}


def run_prefect(config_files: list[str]) -> dict:
    from flows.ml_pipeline import ml_pipeline_flow

    result = ml_pipeline_flow(config_files)
    return {"retrains": sum(1 for m in result["monitor"] if m.get("retrain_result")), "champion": None}


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
    from opsfabric.ml import steps
    from opsfabric.settings import load_settings

    steps.generate_dataset(load_settings(str(overlay)))  # data exists already: not timed on either side
    start = time.perf_counter()
    outcome = run_plain([str(overlay)]) if mode == "plain" else run_prefect([str(overlay)])
    print(json.dumps({"mode": mode, "seconds": time.perf_counter() - start, **outcome}))


def measure(mode: str, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as state:
        done = subprocess.run(
            [sys.executable, __file__, "--child", mode.split("-")[0], "--state", state],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = Path(sys.executable).parent / "prefect"
    server = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError("Prefect server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child")
    parser.add_argument("--state")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.state)
        return
    base_env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    with tempfile.TemporaryDirectory() as home:
        server, url = start_server(Path(home))
        try:
            times: dict[str, list[float]] = {"plain": [], "prefect-server": [], "prefect-ephemeral": []}
            for _ in range(args.repeats):  # interleaved, so drift in machine load hits every mode alike
                times["plain"].append(measure("plain", base_env)["seconds"])
                times["prefect-server"].append(measure("prefect-server", {**base_env, "PREFECT_API_URL": url})["seconds"])
                times["prefect-ephemeral"].append(measure("prefect-ephemeral", base_env)["seconds"])
        finally:
            server.terminate()
            server.wait(timeout=30)
    plain = statistics.median(times["plain"])
    print(f"ML pipeline wall time, median of {args.repeats} (same steps, same data, fresh state each run)")
    for mode, values in times.items():
        ratio = statistics.median(values) / plain
        print(f"  {mode:18s} {statistics.median(values):7.2f} s  runs={[round(v, 2) for v in values]}  ratio vs plain {ratio:.3f}x")
    server_ratio = statistics.median(times["prefect-server"]) / plain
    print(f"goal <= 1.15x against a running server: {'met' if server_ratio <= 1.15 else 'NOT met'} ({server_ratio:.3f}x)")


if __name__ == "__main__":
    main()
