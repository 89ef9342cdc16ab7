"""Where did this come from: ``python -m flows.lineage <ref> [--json FILE] [--openlineage FILE] [--flow]``.

References: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``; ``index:<alias>`` (the live
version, e.g. ``index:docs-live``) or ``index:<collection>`` (``index:docs-v0003``); ``run:<mlflow run id>``;
``data:<path>`` or ``data:<md5>`` (forward: which runs read it and what they produced).

The walk reads MLflow tags, ``dvc.lock`` at the recorded git commit and, when a Prefect API is
configured (``PREFECT_API_URL``), the flow run's details; it never needs Prefect events (pruned
after 7 days). The command line is a read-only query and starts no flow run (no temporary Prefect
server): ``--flow`` runs it as the ``lineage`` flow instead, with the tree as a markdown artifact.
"""

from __future__ import annotations

from prefect import flow

from flows.runners import flow_settings
from tasks.ops import publish_lineage, trace_lineage


@flow(name="lineage", log_prints=True)
def lineage_flow(ref: str, config_files: list[str] | None = None) -> dict:
    """Trace ``ref`` and publish the tree as a Prefect markdown artifact (key ``lineage``)."""
    settings = flow_settings(config_files)
    result = trace_lineage(settings, ref)
    publish_lineage(result)
    return result.to_dict()


def main(args: list[str]) -> None:
    import argparse
    import json
    from pathlib import Path

    from opsfabric.ops.lineage import REF_SYNTAX, openlineage_events, render_tree

    parser = argparse.ArgumentParser(prog="python -m flows.lineage", description="Where did this come from (and, for data:, what did it produce).")
    parser.add_argument("ref", help=REF_SYNTAX)
    parser.add_argument("--json", metavar="FILE", help="write the lineage tree as JSON")
    parser.add_argument("--openlineage", metavar="FILE", help="write one OpenLineage RunEvent per MLflow run, as JSON lines")
    parser.add_argument("--flow", action="store_true", help="run as the Prefect flow 'lineage' (markdown artifact 'lineage')")
    options = parser.parse_args(args)
    if options.flow:
        print(json.dumps(lineage_flow(options.ref), indent=2, default=str))
        return
    from opsfabric.ops.queries import trace_ref
    from opsfabric.settings import load_settings
    from tasks.ops import prefect_flow_run_lookup, ui_links

    settings = load_settings()
    result = trace_ref(settings, options.ref, flow_run_lookup=prefect_flow_run_lookup(), links=ui_links(settings))
    print(render_tree(result.root))
    if options.json:
        Path(options.json).write_text(json.dumps(result.to_dict(), indent=2, default=str))
        print(f"lineage JSON: {options.json}")
    if options.openlineage:
        events = openlineage_events(result)
        Path(options.openlineage).write_text("".join(json.dumps(e, default=str) + "\n" for e in events))
        print(f"OpenLineage: {len(events)} run events in {options.openlineage}")


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
