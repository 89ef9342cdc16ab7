"""Evaluate an index version on the golden set and move the live alias if it passes the gate."""

from __future__ import annotations

from prefect import flow

from flows.runners import flow_settings
from opsfabric.rag.promotion import newest_collection
from tasks.ingest import load_rag_config, prepare_golden
from tasks.rag import evaluate_and_gate


@flow(name="rag-eval", log_prints=True)
def rag_eval_flow(config_files: list[str] | None = None, collection: str | None = None) -> dict:
    """golden set → evaluate ``collection`` (default: the newest build not rolled back) vs live → gate → alias.

    A version an operator rolled back goes live again only when named here as ``collection``.

    Args:
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
        collection: the index version to evaluate (docs-v0003); empty: the newest build not rolled back.
    """
    config = load_rag_config(flow_settings(config_files))
    prepare_golden(config)
    target = collection or newest_collection(config)
    return evaluate_and_gate(config, target, None, None, allow_rolled_back=collection is not None).summary()


def main(args: list[str]) -> None:
    """``python -m flows.rag_eval [--config FILE] [--collection docs-v0003]``."""
    import argparse
    import json

    from flows.rag_eval import rag_eval_flow  # imported after --config is in the environment

    parser = argparse.ArgumentParser(prog="python -m flows.rag_eval", description=rag_eval_flow.__doc__.splitlines()[0])
    parser.add_argument("--collection", default=None, help="a version to evaluate and gate (may be a rolled-back one)")
    print(json.dumps(rag_eval_flow(collection=parser.parse_args(args).collection), indent=2, default=str))


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
