"""Ingest the configured corpus into a new (incremental) index version. Does not move the live alias."""

from __future__ import annotations

from prefect import flow

from flows.runners import flow_settings
from tasks.ingest import ingest_corpus, load_rag_config


@flow(name="rag-ingest", log_prints=True)
def ingest_flow(config_files: list[str] | None = None) -> dict:
    """load → clean → chunk → embed → upsert into a new versioned Qdrant collection.

    Args:
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
    """
    config = load_rag_config(flow_settings(config_files))
    report, run_id = ingest_corpus(config)
    return report.summary() | {"mlflow_run_id": run_id}


def main(args: list[str]) -> None:
    """``python -m flows.ingest [--config FILE]``."""
    import argparse
    import json

    from flows.ingest import ingest_flow  # imported after --config is in the environment

    argparse.ArgumentParser(prog="python -m flows.ingest", description=ingest_flow.__doc__.splitlines()[0]).parse_args(args)
    print(json.dumps(ingest_flow(), indent=2))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
