"""Operate the live index: ``python -m flows.rag_index rollback|status|ask``.

* ``rollback [--to docs-v0003]``: point the live alias back at the previous live version (one command).
* ``status``: versions, their status and scores, and where the alias points.
* ``ask "question"``: answer from the live alias, with citations (extractive unless an LLM is configured).
"""

from __future__ import annotations

from prefect import flow

from flows.runners import flow_settings
from tasks.ingest import load_rag_config
from tasks.rag import answer_question, rollback_index


@flow(name="rag-rollback", log_prints=True)
def rag_rollback_flow(config_files: list[str] | None = None, to: str | None = None) -> dict:
    """Move the live alias back to the previous live index version (or to ``to``).

    Args:
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
        to: the index version to make live (docs-v0002); empty: the previous live version.
    """
    return rollback_index(load_rag_config(flow_settings(config_files)), to)


@flow(name="rag-ask", log_prints=True)
def rag_ask_flow(question: str, config_files: list[str] | None = None) -> dict:
    """Answer one question from the live index version.

    Args:
        question: what to ask, in plain words; the answer cites the passages it comes from.
        config_files: extra YAML overlays (profiles, dataset variants), e.g. configs/profiles/small.yaml.
    """
    answer = answer_question(load_rag_config(flow_settings(config_files)), question)
    print(answer.render())
    return answer.to_dict()


def main(argv: list[str]) -> int:
    """``python -m flows.rag_index [--config FILE] rollback|status|ask``."""
    import argparse
    import json

    from flows.rag_index import rag_ask_flow, rag_rollback_flow  # imported after --config is in the environment
    from opsfabric.rag import operations
    from opsfabric.rag.settings import RagConfig

    parser = argparse.ArgumentParser(prog="python -m flows.rag_index", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rb = sub.add_parser("rollback", help="point the live alias at the previous live version")
    rb.add_argument("--to", default=None, help="a specific collection, e.g. docs-v0002")
    sub.add_parser("status", help="index versions and the live alias")
    ask = sub.add_parser("ask", help="answer a question from the live index")
    ask.add_argument("question")
    args = parser.parse_args(argv)
    if args.command == "rollback":
        print(json.dumps(rag_rollback_flow(None, args.to), indent=2))
    elif args.command == "status":
        print(operations.report_json(operations.index_status(RagConfig(flow_settings(None)))))
    else:
        rag_ask_flow(args.question, None)
    return 0


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
