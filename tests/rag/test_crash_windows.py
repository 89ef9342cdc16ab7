"""``kill -9`` at each crash window of a build, a promotion and a rollback (real processes), then the
next run leaves a consistent state. Mid-upsert kills are in tests/rag/test_ingest.py."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from opsfabric.rag import operations, promotion, qdrant, records, versions
from opsfabric.rag.errors import IndexVersionError
from tests.rag.index_checks import assert_resumes_to_a_fresh_build, build
from tests.rag.child_processes import run
from tests.rag.test_concurrency import SMALL_GOLDEN, live_alias, mlflow_runs

pytestmark = pytest.mark.flows


@pytest.mark.parametrize(
    "point",
    [
        "after-claim",  # registry says "building" (owner, lease); no collection, no upsert yet
        "after-copy",  # the base's points are copied and on disk; the registry does not say so
        "before-built",  # points and docstore written; the registry still says "building"
    ],
)
def test_a_build_killed_at_each_window_is_resumed_to_a_fresh_build(point, overlay_file, make_rag_config, embedder, tiny_corpus: Path):
    overlay, config = overlay_file()[0], make_rag_config()
    v1 = build(config, embedder)
    qdrant.close_all_clients()  # the child needs the local folder
    (tiny_corpus / "python/zen_of_python.txt").write_text("Changed Zen.\n\n" + "Errors should never pass silently. " * 40)
    (tiny_corpus / "extra.txt").write_text("Extra document. " * 300)

    child = run("build", overlay, "--die-at", point)
    assert child.killed, child.stderr[-3000:]
    interrupted = versions.VersionRegistry.load(config).versions[-1]
    assert interrupted.collection == "docs-v0002" and interrupted.status == "building"
    assert interrupted.owner["pid"] == child.process.pid and interrupted.copied_from_base == (point == "before-built")

    resumed = assert_resumes_to_a_fresh_build(config, embedder, make_rag_config, interrupted.collection)
    assert f"pid {child.process.pid}" in resumed.resumed_because and "no longer running" in resumed.resumed_because
    if point == "after-copy":  # not recorded, so copied again: same ids, nothing doubled
        assert resumed.chunks_copied == v1.chunks_total
    if point == "before-built":
        # points written, docstore written beside the version's own (finish moves it into place only
        # once it holds the lease): the resume does not copy again, redoes the diff, drops the leftover
        assert resumed.chunks_copied == 0 and resumed.documents_added == ["extra.txt"], resumed.summary()
        docstores = versions.docstore_path(config, interrupted.collection).parent
        assert sorted(p.name for p in docstores.glob(f"{interrupted.collection}*")) == [f"{interrupted.collection}.json"]


def test_a_promotion_killed_after_the_alias_moved_is_completed_by_the_next_run(overlay_file, make_rag_config, embedder):
    overlay, config = overlay_file(golden_docs=SMALL_GOLDEN)[0], make_rag_config(golden_docs=SMALL_GOLDEN)
    v1 = build(config, embedder).collection
    qdrant.close_all_clients()

    child = run("gate", overlay, "--collection", v1, "--die-at", "after-alias-move")
    assert child.killed, child.stderr[-3000:]
    assert live_alias(config) == v1  # readers already use it...
    registry = versions.VersionRegistry.load(config)
    assert registry.get(v1).status == "built" and registry.get(v1).decision == {} and registry.live_history == []  # ...the registry does not know
    (killed_run,) = mlflow_runs(config, "rag-eval")
    assert killed_run.info.status == "RUNNING"

    record = partial(records.evaluation_run, config, v1, records.rag_lineage(config))
    outcome = promotion.gate_version(config, v1, embedder, record=record)
    assert outcome.label == "already-live" and outcome.live_collection == v1
    registry = versions.VersionRegistry.load(config)
    assert registry.get(v1).status == "live" and registry.live_history == [v1] and registry.get(v1).decision["approved"]
    runs = {r.info.run_id: r for r in mlflow_runs(config, "rag-eval")}
    assert runs[killed_run.info.run_id].info.status == "KILLED"  # its process died: MLflow says so
    assert runs[registry.get(v1).eval_run_id].info.status == "FINISHED"


def _v1_then_v2_live(overlay_file, make_rag_config, embedder, tiny_corpus: Path):
    """Two gated versions, v2 live after v1; the parent's Qdrant client closed for a child to open it."""
    overlay, config = overlay_file(golden_docs=SMALL_GOLDEN)[0], make_rag_config(golden_docs=SMALL_GOLDEN)
    v1 = build(config, embedder).collection
    promotion.gate_version(config, v1, embedder)
    (tiny_corpus / "extra.md").write_text("# Extra\n\nA short page about index rotation windows.\n")
    v2 = build(config, embedder).collection
    assert promotion.gate_version(config, v2, embedder).promoted
    qdrant.close_all_clients()
    return overlay, config, v1, v2


def test_a_rollback_killed_after_the_alias_moved_is_finished_not_reversed(overlay_file, make_rag_config, embedder, tiny_corpus: Path):
    overlay, config, v1, v2 = _v1_then_v2_live(overlay_file, make_rag_config, embedder, tiny_corpus)

    child = run("rollback", overlay, "--die-at", "after-alias-move")
    assert child.killed, child.stderr[-3000:]
    assert operations.index_status(config)["live"] == v1
    assert versions.VersionRegistry.load(config).live_history == [v1, v2]  # not saved
    # the next rollback must not bring the rolled-back v2 back: there is nothing before v1
    with pytest.raises(IndexVersionError, match="no earlier live version"):
        operations.rollback_index(config)
    registry = versions.VersionRegistry.load(config)
    assert registry.live_history == [v1] and registry.get(v1).status == "live" and registry.get(v2).status == "built"


def test_a_re_promotion_killed_after_the_alias_moved_is_completed_not_taken_for_a_rollback(overlay_file, make_rag_config, embedder, tiny_corpus: Path):
    overlay, config, v1, v2 = _v1_then_v2_live(overlay_file, make_rag_config, embedder, tiny_corpus)

    # an operator puts v1 (earlier in the history) live again by name; killed once the alias moved
    child = run("gate", overlay, "--collection", v1, "--die-at", "after-alias-move")
    assert child.killed, child.stderr[-3000:]
    assert live_alias(config) == v1
    registry = versions.VersionRegistry.load(config)
    assert registry.live_history == [v1, v2] and registry.pending_move["kind"] == "promote" and registry.pending_move["target"] == v1
    # the next run completes the promotion: v2 stays the rollback target
    assert operations.rollback_index(config) == {"alias": config.rag.store.alias, "from": v1, "to": v2}
    registry = versions.VersionRegistry.load(config)
    assert registry.pending_move is None and registry.get(v2).status == "live" and registry.get(v1).rolled_back_at
