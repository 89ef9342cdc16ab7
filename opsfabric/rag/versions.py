"""Index versions: the registry, the lock and lease that guard it, and the live alias's lifecycle.

Every build writes a new collection ``<prefix>-vNNNN``; the registry (``<state_dir>/rag/versions.json``)
records each one (collection, base version, corpus and config hashes, status
``building → built → live | rejected``, or ``failed``/``retired``, eval scores, gate decision, MLflow
run ids) and the history of live versions that rollback walks back through.

Concurrency (docs/rag.md, "Locks, leases and compare-and-set"):

* **One lock** per alias, ``rag-index-<alias>`` (:func:`index_lock`, an ``opsfabric.locking``
  lock: kernel ``flock`` locally, a Prefect global concurrency limit across machines). Every registry
  write (:func:`updating`: load, change, save) and every alias move happens under it. In local mode
  every operation that opens Qdrant holds it for its whole duration (:func:`index_session`), because
  Qdrant local mode admits one process per folder: a second run waits for the first instead of failing.
* **A lease** on a build in progress: its owner (host, pid, process start time, a token per claim)
  and ``lease_expires_at``, renewed while it builds. Another run takes the build over (resumes it)
  only when the owner is provably dead on this host or gave the build up, or, for an owner on
  another host, its lease expired; otherwise it stops with :class:`BuildInProgressError`. An owner
  whose build was taken over stops (:class:`LeaseLostError`) at its next renewal, before its upsert,
  or at the latest when it finishes, before its docstore replaces the version's.
* **Compare-and-set** on the alias: the gate applies a decision only if the alias still points where
  it pointed when the candidate and the live version were scored (``opsfabric.rag.promotion``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

from opsfabric import locking
from opsfabric.files import backup_path, write_atomic
from opsfabric.rag import qdrant
from opsfabric.locking import process_alive, process_start_ticks
from opsfabric.rag.errors import BuildInProgressError, IndexVersionError, LeaseLostError
from opsfabric.rag.settings import RagConfig

log = logging.getLogger(__name__)

FINISHED = frozenset({"built", "live", "rejected"})  # builds a reader could use


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime | None = None) -> str:
    return (moment or _now()).isoformat(timespec="seconds")


# ---- the lock -----------------------------------------------------------------------------------
def lock_name(config: RagConfig) -> str:
    """One lock for the registry and the alias it follows."""
    return f"rag-index-{config.rag.store.alias}"


@contextmanager
def index_lock(config: RagConfig, purpose: str) -> Iterator[None]:
    """Hold the index lock (re-entrant within a thread).

    Raises:
        opsfabric.errors.LockTimeoutError: another run held it longer than ``orchestration.lock.timeout_seconds``.
    """
    with locking.exclusive(config.settings, lock_name(config), purpose=purpose):
        yield


@contextmanager
def index_session(config: RagConfig, purpose: str) -> Iterator[Any]:
    """The Qdrant client for one operation (a build, an evaluation, an alias move, a question).

    Local mode: the index lock is held for the whole block and the client is closed at its end, so
    a concurrent run waits for this one, then finds the folder free. Server mode: Qdrant admits many
    clients, so only registry writes and alias moves take the lock (:func:`updating`).
    """
    if qdrant.is_local(config):
        with index_lock(config, purpose), qdrant.connected(config) as client:
            yield client
    else:
        with qdrant.connected(config) as client:
            yield client


# ---- the registry -------------------------------------------------------------------------------
@dataclass
class IndexVersion:
    """One build of the index: a Qdrant collection and where it came from."""

    version: int
    collection: str
    status: str  # building | built | live | rejected | failed | retired
    config_hash: str
    index_config: dict
    corpus_hash: str | None = None
    base_collection: str | None = None
    copied_from_base: bool = False
    created_at: str = field(default_factory=_stamp)
    built_at: str | None = None
    owner: dict | None = None  # while building: host, pid, process start time, command
    lease_expires_at: str | None = None  # while building
    stats: dict = field(default_factory=dict)
    eval_scores: dict = field(default_factory=dict)
    decision: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None  # the rag-index run
    eval_run_id: str | None = None  # the rag-eval run whose decision is recorded here
    # Set when a rollback takes the alias off this version (cleared when it is promoted again): the
    # default gate run never puts it back live; only an operator naming it does.
    rolled_back_at: str | None = None
    rolled_back_by: str | None = None  # host, pid and command of the rollback


@dataclass
class VersionRegistry:
    """All builds and the history of live versions, persisted as JSON under the state folder.

    Read it with :meth:`load` (a consistent snapshot: the file is replaced atomically); change it
    only inside :func:`updating`, which holds the index lock from load to save.
    """

    path: Path
    versions: list[IndexVersion] = field(default_factory=list)
    live_history: list[str] = field(default_factory=list)  # collections, oldest first
    # An alias move under way: {"kind": "promote" | "rollback", "target", "previous"}. Saved before
    # the alias moves and cleared with the registry save after it, so a crash in between tells
    # reconcile_live which move it was (a re-promotion of an older version is not a rollback).
    pending_move: dict | None = None

    @classmethod
    def load(cls, config: RagConfig) -> "VersionRegistry":
        return cls.read(registry_path(config))

    @classmethod
    def read(cls, path: Path) -> "VersionRegistry":
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            return cls(path, [IndexVersion(**v) for v in data["versions"]], data.get("live_history", []), data.get("pending_move"))
        except (ValueError, KeyError, TypeError) as exc:
            backup = backup_path(path)
            restore = (f"restore the copy kept before the last save: cp {backup} {path}" if backup.exists()
                       else "restore it from a backup")
            raise IndexVersionError(
                f"{path}: unreadable index version registry ({exc.__class__.__name__}: {exc})",
                hint=f"{restore}; or move it away to start a new lineage (docs/repair.md). Nothing was changed.",
            ) from exc

    def _save(self) -> None:
        """Atomic write (temp file + rename): a crash leaves the old or the new registry, never half.

        The registry it replaces is kept as ``<name>.bak`` (also written atomically), the repair for a
        registry damaged afterwards (a disk fault, a hand edit).
        """
        data = {"versions": [asdict(v) for v in self.versions], "live_history": self.live_history, "pending_move": self.pending_move}
        write_atomic(self.path, json.dumps(data, indent=2), keep_backup=True)

    def get(self, collection: str) -> IndexVersion:
        for v in self.versions:
            if v.collection == collection:
                return v
        raise IndexVersionError(f"unknown index version {collection!r} in {self.path}")

    def find(self, collection: str) -> IndexVersion | None:
        try:
            return self.get(collection)
        except IndexVersionError:
            return None

    def next_version(self) -> int:
        return max((v.version for v in self.versions), default=0) + 1

    def latest_complete(self, config_hash: str) -> IndexVersion | None:
        """The newest finished build with this index config (the base an incremental build copies)."""
        for v in reversed(self.versions):
            if v.status in FINISHED and v.config_hash == config_hash:
                return v
        return None


def registry_path(config: RagConfig) -> Path:
    return config.rag_state_dir / "versions.json"


@contextmanager
def updating(config: RagConfig, purpose: str) -> Iterator[VersionRegistry]:
    """Load the registry under the index lock, let the block change it, save it when the block ends.

    If the block raises, nothing is saved: a registry change is all or nothing.
    """
    with index_lock(config, purpose):
        registry = VersionRegistry.load(config)
        yield registry
        registry._save()


def collection_name(config: RagConfig, version: int) -> str:
    return f"{config.rag.store.collection_prefix}-v{version:04d}"


def docstore_path(config: RagConfig, collection: str) -> Path:
    """The llama-index docstore (doc id → content hash) that is consistent with ``collection``."""
    return config.rag_state_dir / "docstores" / f"{collection}.json"


# ---- build ownership and leases -------------------------------------------------------------------
def current_owner() -> dict:
    """This process: host, pid and process start time (a pid alone can be reused), and the command."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_start_ticks(pid), "command": " ".join(sys.argv[:3])}


def new_claim_owner() -> dict:
    """The owner of one claim: this process plus a token of its own, so two builds (threads) of one
    process, or a build and its own earlier abandoned claim, are never the same owner."""
    return current_owner() | {"token": uuid.uuid4().hex}


def _this_process(owner: dict | None) -> bool:
    me = current_owner()
    return bool(owner) and all(owner.get(key) == me[key] for key in ("host", "pid", "started"))


def owner_alive(owner: dict | None) -> bool | None:
    """True/False for an owner on this host (same pid *and* start time = the same process); None elsewhere."""
    if not owner:
        return None
    return process_alive(owner.get("host"), owner.get("pid"), owner.get("started"))


def describe_owner(version: IndexVersion) -> str:
    owner = version.owner or {}
    return f"pid {owner.get('pid')} on {owner.get('host')} ({owner.get('command') or 'unknown command'}), lease until {version.lease_expires_at}"


# Builds this process is running now. Changed only under the index lock (in the same block as the
# registry entry it mirrors), so a claim in another thread never sees one without the other.
_ACTIVE_BUILDS: set[str] = set()


def takeover_reason(version: IndexVersion, now: datetime | None = None) -> str | None:
    """Why a ``building`` version may be taken over (owner dead, lease expired), or None if it may not.

    An owner provably alive on this host is never taken over, even past its lease: a stalled build
    (swapped out, stopped) could wake up and write into the version after the new owner cleaned
    it. Only an owner that cannot be checked from here (another host) loses its build by expiry.
    """
    if (version.owner or {}).get("released"):
        return f"its owner {describe_owner(version)} gave it up after a failure"
    alive = owner_alive(version.owner)
    if alive is False:
        return f"its owner {describe_owner(version)} is no longer running"
    if _this_process(version.owner) and version.collection not in _ACTIVE_BUILDS:
        return "this process's earlier build of it stopped before finishing"
    if alive:
        return None
    expires = datetime.fromisoformat(version.lease_expires_at) if version.lease_expires_at else None
    if expires is None or expires <= (now or _now()):
        return f"its lease expired ({describe_owner(version)})"
    return None


@dataclass
class BuildLease:
    """This process's claim on a version it builds. Every write to the version's entry checks it still holds it."""

    config: RagConfig
    collection: str
    owner: dict
    seconds: float
    renew_after: float
    _renewed: float = field(default_factory=time.monotonic)

    def holding(self, registry: VersionRegistry) -> IndexVersion:
        """The version's entry, if this process still owns the build (compare-and-set on the owner).

        Raises:
            LeaseLostError: another run took the build over (this one was too slow to renew).
        """
        version = registry.get(self.collection)
        if version.status != "building" or version.owner != self.owner:
            raise LeaseLostError(
                f"build of {self.collection} was taken over (status {version.status!r}, owner {describe_owner(version)}): "
                "this run stops writing to it",
                hint=f"the lease lasts {self.seconds:.0f} s; a build must renew it more often than that",
            )
        return version

    def extend(self, version: IndexVersion) -> None:
        version.lease_expires_at = _stamp(_now() + timedelta(seconds=self.seconds))
        self._renewed = time.monotonic()

    def renew(self, *, force: bool = False) -> None:
        """Push the lease's expiry forward (at most every ``renew_after`` seconds unless ``force``)."""
        if not force and time.monotonic() - self._renewed < self.renew_after:
            return
        with updating(self.config, f"renew the build lease of {self.collection}") as registry:
            self.extend(self.holding(registry))

    def mark_copied(self) -> None:
        """Record that the base version's points are all in the new collection (a resume skips the copy)."""
        with updating(self.config, f"record the copy into {self.collection}") as registry:
            version = self.holding(registry)
            version.copied_from_base = True
            self.extend(version)

    def pending_docstore(self) -> Path:
        """Where this build writes its docstore; :meth:`finish` moves it into place if the build is still ours."""
        return docstore_path(self.config, self.collection).with_suffix(f".pending-{self.owner['token']}.json")

    def finish(self, corpus_hash: str, stats: dict) -> IndexVersion:
        """Mark the build finished (``built``) and release it. Call only when its points are durable.

        The docstore written to :meth:`pending_docstore` becomes the version's docstore here, under
        the lock and only after the ownership check: a build that lost its lease never replaces the
        docstore of the run that took it over.
        """
        with updating(self.config, f"finish the build of {self.collection}") as registry:
            version = self.holding(registry)
            os.replace(self.pending_docstore(), docstore_path(self.config, self.collection))
            version.status, version.corpus_hash, version.built_at, version.stats = "built", corpus_hash, _stamp(), stats
            version.owner = version.lease_expires_at = None
            _ACTIVE_BUILDS.discard(self.collection)
        return version

    def abandon(self) -> None:
        """The build failed: expire the lease now, so the next run (in any process) resumes it at once."""
        try:
            self.pending_docstore().unlink(missing_ok=True)
            with updating(self.config, f"release the failed build of {self.collection}") as registry:
                version = registry.find(self.collection)
                if version is not None and version.status == "building" and version.owner == self.owner:  # else not ours: leave it
                    # Released, not merely expired: the owner may live on (a worker), yet no longer builds it.
                    version.owner = self.owner | {"released": True}
                    version.lease_expires_at = _stamp()
        finally:
            _ACTIVE_BUILDS.discard(self.collection)  # late is safe: a build still listed is only never taken over


@dataclass
class BuildClaim:
    """What the next build does: nothing (``unchanged``), a ``new`` version, or ``resume`` an abandoned one."""

    kind: Literal["unchanged", "new", "resume"]
    version: IndexVersion
    lease: BuildLease | None = None  # None when unchanged
    reason: str = ""  # why an abandoned build was taken over


def claim_build(config: RagConfig, client: Any, corpus_hash: str, *, lease_seconds: float | None = None) -> BuildClaim:
    """Decide, under the index lock, what to build; allocate the version number or take over an abandoned build.

    One build at a time per registry: a ``building`` version whose lease is live stops this one. A
    build that was abandoned (lease expired, or owner dead on this host) with the current index
    config is resumed; abandoned builds of another index config are marked ``failed``.

    Raises:
        BuildInProgressError: another run is building (names its host, pid and lease expiry).
    """
    config_hash = config.index_config_hash()
    with updating(config, "claim an index version to build") as registry:
        abandoned: list[tuple[IndexVersion, str]] = []
        for version in registry.versions:
            if version.status != "building":
                continue
            reason = takeover_reason(version)
            if reason is None:
                raise BuildInProgressError(
                    f"index version {version.collection} is being built by {describe_owner(version)}",
                    hint="wait for that run to finish; if it is gone, its lease expires by itself and the next run resumes the build",
                )
            abandoned.append((version, reason))
        resumable = next((v for v, _ in reversed(abandoned) if v.config_hash == config_hash), None)
        for version, reason in abandoned:
            if version is not resumable:
                log.warning("abandoned build %s of another index config marked failed: %s", version.collection, reason)
                version.status, version.owner, version.lease_expires_at = "failed", None, None
        base = registry.latest_complete(config_hash)
        if base is not None and not client.collection_exists(base.collection):
            base = None  # deleted by hand: rebuild from scratch
        if resumable is None and base is not None and base.corpus_hash == corpus_hash:
            return BuildClaim("unchanged", base)
        if resumable is not None:
            version, kind = resumable, "resume"
            reason = dict((v.collection, r) for v, r in abandoned)[version.collection]
            log.warning("resuming build %s: %s", version.collection, reason)
        else:
            number = registry.next_version()
            version = IndexVersion(
                number, collection_name(config, number), "building", config_hash, config.index_config(),
                base_collection=base.collection if base else None,
            )
            registry.versions.append(version)
            kind, reason = "new", ""
        ingest = config.rag.ingest
        lease = BuildLease(
            config, version.collection, new_claim_owner(),
            seconds=lease_seconds or ingest.lease_seconds, renew_after=min(ingest.lease_renew_seconds, (lease_seconds or ingest.lease_seconds) / 3),
        )
        version.owner = lease.owner
        lease.extend(version)
        _ACTIVE_BUILDS.add(version.collection)  # inside the lock, with the registry entry it mirrors
    return BuildClaim(kind, version, lease, reason)


def record_index_run(config: RagConfig, collection: str, run_id: str) -> None:
    """Link a version to its ``rag-index`` MLflow run."""
    with updating(config, f"record the MLflow run of {collection}") as registry:
        registry.get(collection).mlflow_run_id = run_id


# ---- the live alias -----------------------------------------------------------------------------
# What a query depends on: the embedding model and the tokenizer (pipeline version). A collection
# built with other chunking or BM25 weights can still be searched with today's queries.
QUERY_KEYS = ("pipeline_version", "embedding")


def query_compatible(built_with: dict, current: dict) -> bool:
    """Whether queries made under the ``current`` index config can search a collection ``built_with`` another."""
    return all(built_with.get(key) == current.get(key) for key in QUERY_KEYS)


def check_servable(config: RagConfig, version: IndexVersion, action: str) -> None:
    """Raise unless ``version`` is a finished build that today's queries can search.

    Raises:
        IndexVersionError: naming the version, its status or the configuration it was built with.
    """
    if version.status not in FINISHED:
        raise IndexVersionError(f"cannot {action} {version.collection!r}: its status is {version.status!r} (not a finished build)")
    if not query_compatible(version.index_config, config.index_config()):
        raise IndexVersionError(
            f"cannot {action} {version.collection!r}: it was built with {_query_side(version.index_config)}, the current "
            f"configuration queries with {_query_side(config.index_config())}",
            hint="restore that configuration first",
        )


def _query_side(index_config: dict) -> str:
    return ", ".join(f"{key}={index_config.get(key)}" for key in QUERY_KEYS)


def reconcile_live(client: Any, config: RagConfig, registry: VersionRegistry) -> str | None:
    """Make the registry agree with the alias, which is the truth readers see; return the live collection.

    Call inside :func:`updating` (or use :func:`reconciled`). Repairs the state a crash leaves between
    moving the alias and saving the registry: the move recorded in ``pending_move`` is completed if
    the alias made it (a promotion is recorded, a rollback finished), forgotten if it did not.
    Without a marker (a registry written before markers existed, or an alias moved by hand), a live
    collection found earlier in the history is taken for a rollback, any other for a promotion.
    """
    pending, registry.pending_move = registry.pending_move, None
    live = qdrant.alias_target(client, config.rag.store.alias)
    if live is None:
        return None
    version = registry.find(live)
    if version is None:
        return live  # a collection made outside OpsFabric: nothing to record
    stale = [v for v in registry.versions if v.status == "live" and v.collection != live]
    if version.status != "live" or stale or not registry.live_history or registry.live_history[-1] != live:
        log.warning("registry %s disagreed with alias %s -> %s: repaired", registry.path, config.rag.store.alias, live)
        if pending and pending.get("target") == live:  # the move under way when the last run stopped
            kind = pending["kind"]
        else:
            kind = "rollback" if live in registry.live_history else "promote"
        if kind == "rollback":
            previous = (pending or {}).get("previous")
            if previous is None:  # no marker: forget what came after the live collection
                cut = len(registry.live_history) - registry.live_history[::-1].index(live)
                registry.live_history = registry.live_history[:cut]
            _record_rollback(registry, previous, live)
        else:
            _record_promotion(registry, live)
    return live


def _begin_move(registry: VersionRegistry, kind: str, target: str, previous: str | None) -> None:
    """Save the intended alias move (and nothing else the block changed so far) before making it."""
    marker = {"kind": kind, "target": target, "previous": previous, "at": _stamp()}
    on_disk = VersionRegistry.read(registry.path)  # under the lock: what the block loaded
    on_disk.pending_move = registry.pending_move = marker
    on_disk._save()


def _record_promotion(registry: VersionRegistry, collection: str) -> None:
    for v in registry.versions:
        if v.status == "live" and v.collection != collection:
            v.status = "built"
    target = registry.get(collection)
    target.status = "live"
    target.rolled_back_at = target.rolled_back_by = None  # put live again on purpose
    if not registry.live_history or registry.live_history[-1] != collection:
        registry.live_history.append(collection)
    registry.pending_move = None


def _record_rollback(registry: VersionRegistry, current: str | None, to: str) -> None:
    if current and current != to and (version := registry.find(current)) is not None:
        version.rolled_back_at = _stamp()
        owner = current_owner()
        version.rolled_back_by = f"pid {owner['pid']} on {owner['host']} ({owner['command'] or 'unknown command'})"
    # drop the rolled-back version from the history so a second rollback goes further back
    registry.live_history = [c for c in registry.live_history if c != current]
    _record_promotion(registry, to)


@contextmanager
def reconciled(config: RagConfig, client: Any, purpose: str) -> Iterator[tuple[VersionRegistry, str | None]]:
    """Under the index lock: the registry repaired to agree with the alias, and the live collection, for the block to change.

    The repair is saved before the block runs, so it holds even if the block then refuses to act.
    """
    with index_lock(config, purpose):
        with updating(config, purpose) as registry:
            live = reconcile_live(client, config, registry)
        with updating(config, purpose) as registry:
            yield registry, live


def promote(client: Any, config: RagConfig, registry: VersionRegistry, collection: str) -> None:
    """Point the live alias at ``collection`` and record it as live. Call inside :func:`updating`."""
    previous = qdrant.alias_target(client, config.rag.store.alias)
    _begin_move(registry, "promote", collection, previous)
    qdrant.move_alias(client, config.rag.store.alias, collection)
    # A crash here leaves the alias moved and the registry unsaved: reconcile_live completes it.
    _record_promotion(registry, collection)


def rollback(client: Any, config: RagConfig, registry: VersionRegistry, to: str | None = None) -> tuple[str | None, str]:
    """Point the alias back at the previous live version (or at ``to``); call inside :func:`reconciled`. Returns (from, to).

    The version taken off the alias is marked ``rolled_back_at``: the default gate run
    (:func:`opsfabric.rag.promotion.newest_collection`) no longer picks it.

    Raises:
        IndexVersionError: nothing to roll back to, or the target is unfinished, unsearchable or deleted.
    """
    alias = config.rag.store.alias
    current = qdrant.alias_target(client, alias)
    if to is None:
        earlier = [c for c in registry.live_history if c != current]
        if not earlier:
            raise IndexVersionError(f"alias {alias!r} has no earlier live version to roll back to ({registry.path})")
        to = earlier[-1]
    target = registry.get(to)
    check_servable(config, target, f"roll back alias {alias!r} to")
    if not client.collection_exists(to):
        raise IndexVersionError(f"cannot roll back alias {alias!r} to {to!r}: the collection was deleted")
    _begin_move(registry, "rollback", to, current)
    qdrant.move_alias(client, alias, to)
    _record_rollback(registry, current, to)
    return current, to


def retire_old_versions(client: Any, config: RagConfig, registry: VersionRegistry) -> list[str]:
    """Delete collections beyond ``rag.store.keep_versions``; call inside :func:`updating`.

    Never deleted: the live version and its rollback target, the base of a build in progress, and
    finished builds without a gate decision (another run may be evaluating them right now; with a
    Qdrant server that run holds no lock while it evaluates). A build nobody ever gates therefore
    stays until it is gated (``rag_eval --collection``) or deleted by hand.
    """
    keep = set(registry.live_history[-2:]) | {v.base_collection for v in registry.versions if v.status == "building"}
    finished = [v for v in registry.versions if v.status in FINISHED | {"failed"}]
    retired = []
    for v in finished[: max(0, len(finished) - config.rag.store.keep_versions)]:
        if v.collection in keep or (v.status == "built" and not v.decision):
            continue
        if client.collection_exists(v.collection):
            client.delete_collection(v.collection)
        docstore_path(config, v.collection).unlink(missing_ok=True)
        v.status = "retired"
        retired.append(v.collection)
    return retired
