"""The RAG lifecycle: golden set → ingest a new index version → evaluate → gate the live alias."""

from __future__ import annotations

from prefect import flow

from flows.runners import flow_settings
from tasks.ingest import ingest_corpus, load_rag_config, prepare_golden
from tasks.rag import evaluate_and_gate, note_unchanged


@flow(name="rag-pipeline", log_prints=True)
def rag_pipeline_flow(config_files: list[str] | None = None) -> dict:
    """validate golden set → ingest (incremental) → evaluate new version vs live → move alias if it passes.

    An unchanged corpus builds nothing, embeds nothing and leaves the alias alone.

    Args:
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
    """
    config = load_rag_config(flow_settings(config_files))
    prepare_golden(config)
    report, index_run_id = ingest_corpus(config)
    if report.needs_evaluation:
        gate = evaluate_and_gate(config, report.collection, report.corpus_hash, index_run_id).summary()
    else:
        gate = note_unchanged(config, report)
    return {"ingest": report.summary(), "gate": gate}


def main(args: list[str]) -> None:
    """``python -m flows.rag_pipeline [--config FILE]``."""
    import argparse
    import json

    from flows.rag_pipeline import rag_pipeline_flow  # imported after --config is in the environment

    argparse.ArgumentParser(prog="python -m flows.rag_pipeline", description=rag_pipeline_flow.__doc__.splitlines()[0]).parse_args(args)
    print(json.dumps(rag_pipeline_flow(), indent=2, default=str))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
