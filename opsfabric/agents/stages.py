"""DVC entry point of the agent suite: ``python -m opsfabric.agents.stages regression``.

Replays the golden scenarios with the same functions as the Prefect flow (``flows/agent_regression.py``)
and writes ``agents.metrics_path`` (pass rate, counts, mean F1, suite seconds) and
``agents.report_dir`` (one diff per scenario plus ``verdicts.json``). It fails (exit 1) when a
scenario does not pass, so ``dvc repro`` stops on a broken agent; the statistical gate against a
baseline is the flow's job (it keeps a baseline per configuration identity).
"""

from __future__ import annotations

import json
import shutil
import sys

from opsfabric.agents.golden import run_suite
from opsfabric.agents.regression import summarise_runs
from opsfabric.settings import Settings, load_settings


def stage_regression(settings: Settings) -> int:
    runs = run_suite(settings.path(settings.agents.golden_dir), settings.agents)
    report = summarise_runs(runs)
    metrics = {k: v for k, v in report.metrics.items() if "." not in k}  # aggregates; per-scenario figures go to the report
    metrics_path = settings.path(settings.agents.metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    report_dir = settings.path(settings.agents.report_dir)
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True)
    (report_dir / "verdicts.json").write_text(json.dumps(report.rows, indent=2) + "\n")
    for sid, diff in report.diffs.items():
        (report_dir / f"{sid}.txt").write_text(diff + "\n")
    failed = [sid for sid, status in report.statuses.items() if status != "pass"]
    print(f"agent suite: {len(runs)} scenarios, pass rate {report.pass_rate:.3f}" + (f"; not passing: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["regression"]:
        print("usage: python -m opsfabric.agents.stages regression", file=sys.stderr)
        return 2
    from opsfabric.runtime_env import configure_runtime_env

    configure_runtime_env()
    return stage_regression(load_settings())


if __name__ == "__main__":
    raise SystemExit(main())
