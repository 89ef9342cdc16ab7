"""Build leases and their owners on real Qdrant local mode with real MiniLM: a build that lost its
lease writes nothing more, two claims of one process are two owners, a failed release does not hide
the build's own error, and retiring old versions spares a build another run may be evaluating.

Races between processes: tests/rag/test_concurrency.py; kills at each window: test_crash_windows.py."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from opsfabric.rag import qdrant, versions
from opsfabric.rag.errors import BuildInProgressError, LeaseLostError
from tests.rag.index_checks import build, points

pytestmark = pytest.mark.flows
ELSEWHERE = {"host": "another-host", "pid": 4242, "started": 1, "command": "python -m flows.ingest", "token": "theirs"}


class EmbeddingWithSideEffect:
    """The real embedding model; ``before_first_batch`` runs once, when the build starts embedding."""

    def __init__(self, real, before_first_batch):
        self.real, self.before_first_batch, self.called = real, before_first_batch, False

    def __call__(self, nodes, **kwargs):
        if not self.called:
            self.called = True
            self.before_first_batch()
        return self.real(nodes, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_build_whose_lease_was_taken_over_writes_no_point_and_no_docstore(make_rag_config, embedder, tiny_corpus: Path):
    config = make_rag_config()
    v1 = build(config, embedder)
    (tiny_corpus / "late.md").write_text("# Late\n\nA document added while the builder stalls past its lease.\n")

    def taken_over_by_another_host():
        # as if this build stalled past its lease (it stops renewing between embedding slices) and a
        # run on another host resumed it: the registry now names that run as the owner
        with versions.updating(config, "test: another host takes the build over") as registry:
            building = next(v for v in registry.versions if v.status == "building")
            building.owner = ELSEWHERE
            building.lease_expires_at = (datetime.now(timezone.utc) + timedelta(minutes=2)).isoformat(timespec="seconds")

    with pytest.raises(LeaseLostError, match=r"build of docs-v0002 was taken over .*pid 4242 on another-host"):
        build(config, EmbeddingWithSideEffect(embedder, taken_over_by_another_host))

    # stopped before the pipeline's upsert: only the points copied from v1 (before the takeover) are there
    assert {doc for doc, _, _ in points(config, "docs-v0002").values()} == {doc for doc, _, _ in points(config, v1.collection).values()}
    docstores = versions.docstore_path(config, "docs-v0002").parent
    assert not versions.docstore_path(config, "docs-v0002").exists()  # the new owner's docstore is not replaced
    assert sorted(p.name for p in docstores.iterdir()) == [f"{v1.collection}.json"]  # no pending docstore left behind
    version = versions.VersionRegistry.load(config).get("docs-v0002")
    assert version.status == "building" and version.owner == ELSEWHERE  # the new owner's claim is untouched


def test_two_claims_in_one_process_are_two_owners(make_rag_config):
    config = make_rag_config()
    with versions.index_session(config, "test: first claim") as client:
        first = versions.claim_build(config, client, "corpus-1")
    assert first.kind == "new" and first.version.collection in versions._ACTIVE_BUILDS
    # another thread of this process asks while the first build runs: refused, not shared
    with versions.index_session(config, "test: second claim") as client, pytest.raises(BuildInProgressError, match="docs-v0001 is being built"):
        versions.claim_build(config, client, "corpus-1")

    first.lease.abandon()  # the first build failed; a later build of this process resumes it...
    with versions.index_session(config, "test: second claim") as client:
        second = versions.claim_build(config, client, "corpus-1")
    # ...and the first lease, same process and all, no longer holds it: it can neither renew nor finish
    with pytest.raises(LeaseLostError, match="docs-v0001 was taken over"):
        first.lease.renew(force=True)
    with pytest.raises(LeaseLostError):
        first.lease.finish("corpus-1", {})
    assert second.kind == "resume" and "gave it up after a failure" in second.reason
    assert second.lease.owner["pid"] == first.lease.owner["pid"] and second.lease.owner["token"] != first.lease.owner["token"]
    second.lease.renew(force=True)
    assert versions.VersionRegistry.load(config).get("docs-v0001").owner == second.lease.owner
    second.lease.abandon()


def test_a_failed_release_does_not_hide_the_error_that_stopped_the_build(make_rag_config, embedder, caplog):
    config = make_rag_config()

    def registry_breaks_then_embedding_fails():
        versions.registry_path(config).write_text("{ not json")  # the release (abandon) will fail to read it
        raise RuntimeError("embedding backend crashed")

    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="embedding backend crashed"):
        build(config, EmbeddingWithSideEffect(embedder, registry_breaks_then_embedding_fails))
    assert "could not release the failed build of docs-v0001" in caplog.text and "unreadable index version registry" in caplog.text


def test_retiring_old_versions_spares_builds_not_gated_yet(make_rag_config):
    config = make_rag_config(store={"keep_versions": 2})
    client = qdrant.open_client(config)
    judged = {"approved": False, "reasons": ["test"]}
    statuses = [("live", judged), ("built", {}), ("rejected", judged), ("built", judged), ("rejected", judged)]
    with versions.updating(config, "test: five versions") as registry:
        for number, (status, decision) in enumerate(statuses, start=1):
            name = versions.collection_name(config, number)
            qdrant.ensure_collection(client, name, 8)
            registry.versions.append(versions.IndexVersion(number, name, status, config.index_config_hash(), config.index_config(), decision=decision))
        registry.live_history = ["docs-v0001"]
        # docs-v0002 is built and not judged: another run (server mode: no lock while it evaluates) may be gating it
        retired = versions.retire_old_versions(client, config, registry)
    assert retired == ["docs-v0003"]
    assert client.collection_exists("docs-v0002") and not client.collection_exists("docs-v0003")
    assert versions.VersionRegistry.load(config).get("docs-v0002").status == "built"
