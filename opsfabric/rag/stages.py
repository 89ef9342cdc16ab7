"""DVC stage entry points: ``python -m opsfabric.rag.stages golden|ingest|evaluate``.

Same functions as the Prefect flows (``opsfabric.rag.ingest``, ``.promotion``, ``.records``). Output locations are the
module constants below, named once here and in ``dvc.yaml``. The index itself lives in
Qdrant (state folder or server), outside DVC; ``INDEX_VERSION`` records which version a stage built
so the evaluate stage depends on it. Moving the live alias is the Prefect flow's job (a decision over
time, not a DAG output): the evaluate stage writes the gate decision but moves nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from opsfabric.runtime_env import configure_runtime_env
from opsfabric.stage_outputs import write_json

INDEX_VERSION = Path("reports/rag/index_version.json")
INGEST_METRICS = Path("metrics/rag_ingest.json")
EVAL_TABLE = Path("reports/rag/eval_per_question.csv")
EVAL_METRICS = Path("metrics/rag_eval.json")
DVC_TAG = {"opsfabric.source": "dvc"}  # on the MLflow runs a DVC stage logs


def stage_golden(settings) -> None:
    from opsfabric.rag.golden import prepare_golden_set, read_golden_source
    from opsfabric.rag.ingest import load_configured_corpus
    from opsfabric.rag.settings import RagConfig

    config = RagConfig(settings)
    out = prepare_golden_set(read_golden_source(config.golden_source), load_configured_corpus(config), config.golden_source, config.golden_prepared)
    print(f"golden set validated against the corpus: {out}")


def stage_ingest(settings) -> None:
    from opsfabric.rag import ingest, records
    from opsfabric.rag.settings import RagConfig

    config = RagConfig(settings)
    report = ingest.ingest_corpus(config)
    records.log_index_version(config, report, records.rag_lineage(config, report.corpus_hash), extra_tags=DVC_TAG)
    # Stable content only (no timings): the output changes iff the index version changes.
    write_json(settings.path(INDEX_VERSION), {"collection": report.collection, "corpus_hash": report.corpus_hash, "config_hash": report.config_hash})
    write_json(settings.path(INGEST_METRICS), {k: v for k, v in report.summary().items() if k != "seconds"})
    print(json.dumps(report.summary(), indent=2))


def stage_evaluate(settings) -> None:
    from opsfabric.rag import promotion, records
    from opsfabric.rag.settings import RagConfig

    config = RagConfig(settings)
    built = json.loads(settings.path(INDEX_VERSION).read_text())
    verdict = promotion.judge_version(config, built["collection"])  # decided, not applied: the alias is the flows' job
    with records.evaluation_run(config, built["collection"], records.rag_lineage(config, built["corpus_hash"]), extra_tags=DVC_TAG) as run:
        run.log_verdict(verdict)
    # Timings vary run to run and stay in MLflow; the DVC output holds what the index and config decide.
    records.write_table_csv([{k: v for k, v in row.items() if not k.endswith("latency_ms")} for row in verdict.candidate.table()], settings.path(EVAL_TABLE))
    scores = {k: round(v, 6) for k, v in verdict.candidate.aggregates.items() if not k.endswith("latency_ms")}
    write_json(settings.path(EVAL_METRICS), {**scores, "gate_approved": verdict.decision.approved, "compared_with_live": verdict.live.collection if verdict.live else None})
    print(json.dumps({"decision": verdict.decision.to_dict(), "scores": scores}, indent=2, default=str))


STAGES = {"golden": stage_golden, "ingest": stage_ingest, "evaluate": stage_evaluate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsfabric.rag.stages", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--config", action="append", default=[], help="extra YAML overlay (repeatable)")
    args = parser.parse_args(argv)
    configure_runtime_env()
    from opsfabric.errors import OpsFabricError
    from opsfabric.settings import load_settings

    try:
        STAGES[args.stage](load_settings(*args.config))
    except OpsFabricError as exc:  # a named error: its message and what to do, not a traceback
        hint = f"\nhint: {exc.hint}" if exc.hint else ""
        print(f"stage {args.stage} failed: {exc}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
