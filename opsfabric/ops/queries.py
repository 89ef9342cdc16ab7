"""The two questions as plain calls over the configured stores: trace a reference, read the ops state.

What the flows, the command line and the tests call; :mod:`opsfabric.ops.lineage` and
:mod:`opsfabric.ops.report` hold the logic, :mod:`opsfabric.ops.records` the reading.
"""

from __future__ import annotations

from typing import Any

from opsfabric.ops.lineage import LineageResult, parse_ref, trace_lineage
from opsfabric.ops.records import FlowRunLookup, Links, file_md5_of_ref, platform_records
from opsfabric.ops.report import OpsState, collect_state


def trace_ref(settings: Any, ref: str, *, flow_run_lookup: FlowRunLookup | None = None, links: Links | None = None) -> LineageResult:
    """The lineage of ``ref`` (syntax: :data:`opsfabric.ops.lineage.REF_SYNTAX`) in the configured stores.

    Raises:
        opsfabric.ops.lineage.LineageError: the reference is malformed or names nothing the stores know.
    """
    parsed = parse_ref(ref)  # a malformed reference fails before any store is opened
    source = platform_records(settings, flow_run_lookup, links)
    data_md5 = file_md5_of_ref(settings.project_root, parsed.name) if parsed.kind == "data" else None
    return trace_lineage(
        source,
        parsed,
        project_root=settings.project_root,
        model_name=settings.ml.registered_model,
        path_hints={"agent_golden": settings.agents.golden_dir, "rag_corpus": settings.rag.corpus.path},
        data_md5=data_md5,
    )


def read_ops_state(settings: Any, *, links: Links | None = None) -> OpsState:
    """Everything the ops report shows, read from the configured stores."""
    return collect_state(platform_records(settings, links=links), settings)
