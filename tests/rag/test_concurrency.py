"""Two runs at once, in real processes: builds and promotions are serialized by the index lock, a
running build is never taken over, and a verdict made against another live version is never
applied. Afterwards the registry, the alias and MLflow agree."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from opsfabric import tracking
from opsfabric.errors import StaleDecisionError
from opsfabric.locking import process_start_ticks
from opsfabric.rag import promotion, qdrant, versions
from opsfabric.rag.errors import BuildInProgressError, StaleGateDecisionError
from tests.rag.index_checks import assert_one_copy_per_chunk, build
from tests.rag.child_processes import spawn, wait_for

pytestmark = pytest.mark.flows
# Six golden questions: every evaluation in these tests stays short on a loaded 2-core machine.
SMALL_GOLDEN = ["libffi/Thread-Safety.html", "libffi/Memory-Usage.html"]


def mlflow_runs(config, experiment: str) -> list:
    client = tracking.mlflow_client(config.settings)
    found = client.get_experiment_by_name(f"{config.settings.tracking.experiment_prefix}-{experiment}")
    return [] if found is None else client.search_runs([found.experiment_id])


def live_alias(config) -> str | None:
    with qdrant.connected(config) as client:
        return qdrant.alias_target(client, config.rag.store.alias)


def test_two_racing_builds_make_one_version_and_the_second_waits_for_it(overlay_file, make_rag_config, tmp_path: Path):
    overlay, config = overlay_file()[0], make_rag_config()
    go = tmp_path / "go"
    children = [spawn("build", overlay, "--ready", str(tmp_path / f"ready-{n}"), "--go", str(go)) for n in range(2)]
    for n, child in enumerate(children):
        wait_for(tmp_path / f"ready-{n}", child)  # both have loaded MiniLM
    go.touch()
    results = [child.wait().result() for child in children]

    assert sorted(r["status"] for r in results) == ["built", "unchanged"], results
    assert {r["collection"] for r in results} == {"docs-v0001"}
    second = children[[r["status"] for r in results].index("unchanged")]
    assert "waiting for lock rag-index-docs-live" in second.stderr  # it really started while the other built
    registry = versions.VersionRegistry.load(config)
    assert [(v.collection, v.status, v.owner, v.lease_expires_at) for v in registry.versions] == [("docs-v0001", "built", None, None)]
    runs = mlflow_runs(config, "rag-index")
    assert [r.info.status for r in runs] == ["FINISHED"] and registry.versions[0].mlflow_run_id == runs[0].info.run_id
    assert_one_copy_per_chunk(config, "docs-v0001")


def test_a_running_build_is_never_taken_over_and_a_killed_one_is_resumed(overlay_file, make_rag_config, embedder, tmp_path: Path):
    import signal

    overlay, config = overlay_file()[0], make_rag_config()
    claimer = spawn("claim", overlay, "--ready", str(tmp_path / "claimed"))
    wait_for(tmp_path / "claimed", claimer)  # it holds docs-v0001's lease, not the lock: it is "building"
    try:
        with pytest.raises(BuildInProgressError, match=rf"docs-v0001 is being built by pid {claimer.process.pid} on "):
            build(config, embedder)
        claimed = versions.VersionRegistry.load(config).get("docs-v0001")
        assert claimed.status == "building" and claimed.owner["pid"] == claimer.process.pid  # untouched
        assert not (config.qdrant_path / "collection" / "docs-v0001").exists()
        # a stalled owner (past its lease) that is alive on this host is not taken over either: it could
        # wake up and write into the version after the new owner cleaned it
        with versions.updating(config, "test: the claimer stalls past its lease") as registry:
            registry.get("docs-v0001").lease_expires_at = "2020-01-01T00:00:00+00:00"
        with pytest.raises(BuildInProgressError, match=rf"docs-v0001 is being built by pid {claimer.process.pid} on .*lease until 2020-01-01"):
            build(config, embedder)
        assert versions.VersionRegistry.load(config).get("docs-v0001").owner == claimed.owner
    finally:
        claimer.process.send_signal(signal.SIGKILL)
        claimer.wait()

    resumed = build(config, embedder)
    assert resumed.status == "resumed" and resumed.collection == "docs-v0001", resumed.summary()
    assert f"pid {claimer.process.pid}" in resumed.resumed_because and "no longer running" in resumed.resumed_because
    version = versions.VersionRegistry.load(config).get("docs-v0001")
    assert version.status == "built" and version.owner is None and version.lease_expires_at is None
    assert_one_copy_per_chunk(config, "docs-v0001")


def test_a_build_owned_elsewhere_is_taken_over_only_once_its_lease_expired(make_rag_config, embedder):
    config = make_rag_config()
    elsewhere = {"host": "another-host", "pid": 4242, "started": 1, "command": "python -m flows.ingest"}
    in_a_minute = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat(timespec="seconds")
    with versions.updating(config, "test: builds claimed on another host") as registry:
        registry.versions.append(versions.IndexVersion(
            1, "docs-v0001", "building", config.index_config_hash(), config.index_config(), owner=elsewhere, lease_expires_at=in_a_minute,
        ))
        registry.versions.append(versions.IndexVersion(  # abandoned long ago, with another index config
            2, "docs-v0002", "building", "another-config", {}, owner=elsewhere, lease_expires_at="2020-01-01T00:00:00+00:00",
        ))
    # another host's process cannot be checked from here: its live lease is what counts
    with pytest.raises(BuildInProgressError, match=r"docs-v0001 is being built by pid 4242 on another-host .*lease until") as refused:
        build(config, embedder)
    assert "lease expires by itself" in refused.value.hint

    with versions.updating(config, "test: the other host stopped renewing") as registry:
        registry.get("docs-v0001").lease_expires_at = "2020-01-01T00:00:00+00:00"
    resumed = build(config, embedder)
    assert resumed.status == "resumed" and resumed.collection == "docs-v0001" and "lease expired" in resumed.resumed_because
    registry = versions.VersionRegistry.load(config)
    assert registry.get("docs-v0002").status == "failed"  # abandoned, other config: never resumed, retired later
    assert registry.next_version() == 3  # numbers are never reused


def test_racing_promotions_of_one_version_move_the_alias_once(overlay_file, make_rag_config, embedder, tmp_path: Path):
    overlay, config = overlay_file(golden_docs=SMALL_GOLDEN)[0], make_rag_config(golden_docs=SMALL_GOLDEN)
    v1 = build(config, embedder).collection
    qdrant.close_all_clients()  # the children need the local folder
    gates = {
        n: spawn("gate", overlay, "--collection", v1, "--ready", str(tmp_path / f"judged-{n}"), "--go", str(tmp_path / f"go-{n}")) for n in "ab"
    }
    for n, child in gates.items():
        wait_for(tmp_path / f"judged-{n}", child)  # both decided "go live" while nothing was live
    (tmp_path / "go-a").touch()
    first = gates["a"].wait().result()
    (tmp_path / "go-b").touch()
    second = gates["b"].wait().result()

    assert first["promoted"] and first["attempts"] == 1 and first["outcome"] == "promoted"
    # the second verdict was stale (nothing was live when it was made): judged again, not applied twice
    assert not second["promoted"] and second["outcome"] == "already-live" and second["attempts"] == 2
    assert f"moved from None to {v1}" in second["stale"][0]
    assert live_alias(config) == v1
    registry = versions.VersionRegistry.load(config)
    assert registry.get(v1).status == "live" and registry.live_history == [v1]
    runs = {r.data.tags["rag.gate.outcome"]: r for r in mlflow_runs(config, "rag-eval")}
    assert sorted(runs) == ["already-live", "promoted", "stale"] and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert [r.data.tags["rag.collection"] for r in runs.values() if r.data.metrics.get("gate_promoted") == 1.0] == [v1]
    assert registry.get(v1).eval_run_id == runs["already-live"].info.run_id  # the verdict applied last


def test_a_verdict_made_against_another_live_version_is_never_applied(make_rag_config, embedder, tiny_corpus: Path):
    config = make_rag_config(golden_docs=SMALL_GOLDEN)
    v1 = build(config, embedder).collection
    (tiny_corpus / "extra.md").write_text("# Extra\n\nA short page about index rotation windows.\n")
    v2 = build(config, embedder).collection
    stale = promotion.judge_version(config, v2, embedder)  # nothing is live yet...
    assert stale.decision.approved and stale.live_collection is None
    assert promotion.gate_version(config, v1, embedder).promoted  # ...then another run puts v1 live

    with pytest.raises(StaleGateDecisionError, match=rf"moved from None to {v1} while {v2} was being evaluated") as refused:
        promotion.apply_verdict(config, stale)
    assert isinstance(refused.value, StaleDecisionError)
    registry = versions.VersionRegistry.load(config)
    assert live_alias(config) == v1 and registry.get(v2).status == "built" and registry.get(v2).decision == {}
    # judged again, the candidate is compared with the version that is live now
    again = promotion.gate_version(config, v2, embedder)
    assert again.verdict.live_collection == v1 and again.verdict.live is not None and again.verdict.live.collection == v1


def test_a_killed_owner_is_dead_even_before_it_is_reaped_and_a_reused_pid_is_not_it():
    import signal
    import subprocess
    import time

    sleeper = subprocess.Popen(["sleep", "60"])
    time.sleep(0.2)
    owner = versions.current_owner() | {"pid": sleeper.pid, "started": process_start_ticks(sleeper.pid)}
    assert versions.owner_alive(owner) is True
    assert versions.owner_alive(owner | {"started": owner["started"] - 1}) is False  # same pid, another process
    sleeper.send_signal(signal.SIGKILL)
    time.sleep(0.2)
    assert versions.owner_alive(owner) is False  # a zombie: killed, not reaped yet
    sleeper.wait()
    assert versions.owner_alive(owner) is False
    assert versions.owner_alive(owner | {"host": "another-host"}) is None  # cannot tell from here
