"""Evaluate an index version on the golden set and move the live alias if it passes the gate."""

from __future__ import annotations

from prefect import flow

from flows.runners import flow_settings
from opsfabric.rag.promotion import newest_collection
from tasks.ingest import load_rag_config, prepare_golden
from tasks.rag import evaluate_and_gate


@flow(name="rag-eval", log_prints=True)
def rag_eval_flow(config_files: list[str] | None = None, collection: str | None = None) -> dict:
    """golden set → evaluate ``collection`` (default: the newest build) vs live → gate → alias."""
    config = load_rag_config(flow_settings(config_files))
    prepare_golden(config)
    target = collection or newest_collection(config)
    return evaluate_and_gate(config, target, None, None).summary()


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=rag_eval_flow.__doc__)
    parser.add_argument("--collection", default=None)
    print(json.dumps(rag_eval_flow(collection=parser.parse_args().collection), indent=2, default=str))
