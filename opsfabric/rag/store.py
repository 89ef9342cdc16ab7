"""Qdrant behind a few calls: open the store, versioned collections, the live alias, the version registry.

Local mode (a folder under the state dir) is the default; ``rag.store.url`` points at a server.
Qdrant local mode allows one client per folder: within a process every caller shares one client;
a second *process* gets :class:`IndexLockedError` naming the folder and the process holding it.

The version registry (``<state_dir>/rag/versions.json``) records every build: collection, base
version, corpus and config hashes, status (building → built → live | rejected | failed), eval
scores and MLflow run id, and the history of live versions that rollback walks back through.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import atexit
import logging
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from opsfabric.rag.errors import IndexLockedError, IndexVersionError
from opsfabric.rag.settings import RagConfig

log = logging.getLogger(__name__)
_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()
OWNER_FILE = "opsfabric-owner.json"


def open_qdrant(config: RagConfig) -> Any:
    """The process's Qdrant client for the configured store (server URL or local folder).

    Raises:
        IndexLockedError: local mode and another process holds the folder.
    """
    from qdrant_client import QdrantClient

    store = config.rag.store
    key = store.url or str(config.qdrant_path.resolve())
    with _CLIENTS_LOCK:
        if key in _CLIENTS:
            return _CLIENTS[key]
        if store.url:
            client = QdrantClient(url=store.url, api_key=config.secret(store.api_key_env), timeout=60)
        else:
            path = config.qdrant_path.resolve()
            path.mkdir(parents=True, exist_ok=True)
            try:
                client = QdrantClient(path=str(path))
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                raise IndexLockedError(
                    f"Qdrant local folder {path} is locked by another process ({_describe_owner(path)}); "
                    "Qdrant local mode allows one process at a time: wait for it to finish, or configure a "
                    "server with rag.store.url"
                ) from exc
            (path / OWNER_FILE).write_text(
                json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv[:4], "since": _now()})
            )
        _CLIENTS[key] = client
        atexit.register(_close_quietly, client)
        return client


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - interpreter shutdown: modules may already be gone
        pass


def close_qdrant(config: RagConfig) -> None:
    """Close and forget the process's client for this store (releases the local folder lock)."""
    key = config.rag.store.url or str(config.qdrant_path.resolve())
    with _CLIENTS_LOCK:
        client = _CLIENTS.pop(key, None)
    if client is not None:
        client.close()


def _describe_owner(path: Path) -> str:
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return "owner unknown"
    return f"pid {owner.get('pid')} on {owner.get('host')}, command {' '.join(owner.get('argv') or [])!r}, since {owner.get('since')}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- collections and alias --------------------------------------------------------------------
def collection_name(config: RagConfig, version: int) -> str:
    return f"{config.rag.store.collection_prefix}-v{version:04d}"


# llama-index's QdrantVectorStore writes these names when hybrid is enabled; queries use them too.
DENSE_VECTOR = "text-dense"
SPARSE_VECTOR = "text-sparse-new"


def ensure_collection(client: Any, name: str, dimensions: int) -> None:
    """A collection with a cosine dense vector and a BM25 sparse vector (IDF applied by Qdrant)."""
    from qdrant_client import models

    if not client.collection_exists(name):
        client.create_collection(
            name,
            vectors_config={DENSE_VECTOR: models.VectorParams(size=dimensions, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        with warnings.catch_warnings():  # local mode ignores payload indexes and warns; servers use them
            warnings.simplefilter("ignore")
            client.create_payload_index(name, "doc_id", models.PayloadSchemaType.KEYWORD)


def live_collection(client: Any, alias: str) -> str | None:
    """The collection the alias points at, or None."""
    for item in client.get_aliases().aliases:
        if item.alias_name == alias:
            return item.collection_name
    return None


def resolve_collection(client: Any, name: str) -> str:
    """``name`` itself, or the collection it points at when it is an alias (local mode needs this)."""
    if client.collection_exists(name):
        return name
    target = live_collection(client, name)
    if target is None:
        raise IndexVersionError(f"no collection or alias named {name!r} in the Qdrant store")
    return target


def point_alias(client: Any, alias: str, collection: str) -> None:
    """Move ``alias`` to ``collection`` in one atomic alias update (readers never see no alias)."""
    from qdrant_client import models

    actions: list[Any] = []
    if live_collection(client, alias) is not None:
        actions.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    actions.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
    client.update_collection_aliases(change_aliases_operations=actions)


def point_batches(client: Any, collection: str, *, with_vectors: bool = False, scroll_filter: Any = None, batch: int = 512) -> Iterator[list]:
    """Every point of ``collection`` (matching ``scroll_filter``), with its payload, a batch at a time."""
    offset = None
    while True:
        points, offset = client.scroll(
            collection, scroll_filter=scroll_filter, limit=batch, offset=offset, with_payload=True, with_vectors=with_vectors
        )
        if points:
            yield points
        if offset is None:
            return


def iter_points(client: Any, collection: str, **kwargs: Any) -> Iterator[Any]:
    """Every point of ``collection``, one at a time (keyword arguments as :func:`point_batches`)."""
    for points in point_batches(client, collection, **kwargs):
        yield from points


def copy_points(client: Any, source: str, target: str) -> int:
    """Copy every point (vector and payload, same ids) from ``source`` to ``target``; idempotent."""
    from qdrant_client import models

    copied = 0
    for points in point_batches(client, source, with_vectors=True):
        client.upsert(target, [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points], wait=True)
        copied += len(points)
    return copied


def scroll_payloads(client: Any, collection: str) -> list[tuple[str, dict]]:
    """Every point's (id, payload) in the collection."""
    return [(str(p.id), p.payload or {}) for p in iter_points(client, collection, batch=1024)]


def chunk_text(payload: dict) -> str | None:
    """The chunk text llama-index stored in a point's payload (``_node_content``), or None."""
    return json.loads(payload.get("_node_content") or "{}").get("text")


# ---- version registry ---------------------------------------------------------------------------
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
    created_at: str = field(default_factory=_now)
    built_at: str | None = None
    stats: dict = field(default_factory=dict)
    eval_scores: dict = field(default_factory=dict)
    decision: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None


@dataclass
class VersionRegistry:
    """All builds and the history of live versions, persisted as JSON under the state folder."""

    path: Path
    versions: list[IndexVersion] = field(default_factory=list)
    live_history: list[str] = field(default_factory=list)  # collections, oldest first

    @classmethod
    def load(cls, config: RagConfig) -> "VersionRegistry":
        path = config.rag_state_dir / "versions.json"
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            return cls(path, [IndexVersion(**v) for v in data["versions"]], data.get("live_history", []))
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexVersionError(
                f"{path}: unreadable index version registry ({exc.__class__.__name__}: {exc}); "
                "restore it from a backup or move it away to start a new lineage"
            ) from exc

    def save(self) -> None:
        """Atomic write (temp file + rename): a crash leaves the old or the new registry, never half."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"versions": [asdict(v) for v in self.versions], "live_history": self.live_history}, indent=2))
        os.replace(tmp, self.path)

    def get(self, collection: str) -> IndexVersion:
        for v in self.versions:
            if v.collection == collection:
                return v
        raise IndexVersionError(f"unknown index version {collection!r} in {self.path}")

    def next_version(self) -> int:
        return max((v.version for v in self.versions), default=0) + 1

    def unfinished(self, config_hash: str) -> IndexVersion | None:
        """A build that crashed before it finished, with the same index config: resume into it."""
        for v in reversed(self.versions):
            if v.status == "building" and v.config_hash == config_hash:
                return v
        return None

    def latest_complete(self, config_hash: str) -> IndexVersion | None:
        """The newest finished build with this index config (the base an incremental build copies)."""
        for v in reversed(self.versions):
            if v.status in {"built", "live", "rejected"} and v.config_hash == config_hash:
                return v
        return None


def docstore_path(config: RagConfig, collection: str) -> Path:
    """The llama-index docstore (doc id → content hash) that is consistent with ``collection``."""
    return config.rag_state_dir / "docstores" / f"{collection}.json"


def delete_version(client: Any, config: RagConfig, registry: VersionRegistry, version: IndexVersion) -> None:
    if client.collection_exists(version.collection):
        client.delete_collection(version.collection)
    docstore_path(config, version.collection).unlink(missing_ok=True)
    version.status = "retired"


def retire_old_versions(client: Any, config: RagConfig, registry: VersionRegistry) -> list[str]:
    """Delete collections beyond ``rag.store.keep_versions``, never the live one or its rollback target."""
    keep = set(registry.live_history[-2:])
    alive = [v for v in registry.versions if v.status in {"built", "live", "rejected", "failed"}]
    retired = []
    for v in alive[: max(0, len(alive) - config.rag.store.keep_versions)]:
        if v.collection not in keep:
            delete_version(client, config, registry, v)
            retired.append(v.collection)
    if retired:
        registry.save()
    return retired


# What a query depends on: the embedding model and the tokenizer (pipeline version). A collection
# built with other chunking or BM25 weights can still be searched with today's queries.
QUERY_KEYS = ("pipeline_version", "embedding")


def query_compatible(built_with: dict, current: dict) -> bool:
    """Whether queries made under the ``current`` index config can search a collection ``built_with`` another."""
    return all(built_with.get(key) == current.get(key) for key in QUERY_KEYS)


def reconcile_live(client: Any, config: RagConfig, registry: VersionRegistry) -> str | None:
    """Make the registry agree with the alias, which is the truth readers see; return the live collection.

    Repairs the state a crash leaves between moving the alias and saving the registry.
    """
    live = live_collection(client, config.rag.store.alias)
    if live is None:
        return None
    try:
        version = registry.get(live)
    except IndexVersionError:
        return live  # a collection made outside OpsFabric: nothing to record
    stale = [v for v in registry.versions if v.status == "live" and v.collection != live]
    if version.status != "live" or stale or not registry.live_history or registry.live_history[-1] != live:
        log.warning("registry %s disagreed with alias %s -> %s: repaired", registry.path, config.rag.store.alias, live)
        for v in stale:
            v.status = "built"
        version.status = "live"
        if live in registry.live_history:  # a rollback to it was cut short: forget what came after it
            registry.live_history = registry.live_history[: len(registry.live_history) - registry.live_history[::-1].index(live)]
        else:  # a promotion was cut short
            registry.live_history.append(live)
        registry.save()
    return live


def check_servable(config: RagConfig, version: IndexVersion, action: str) -> None:
    """Raise unless ``version`` is a finished build that today's queries can search.

    Raises:
        IndexVersionError: naming the version, its status or the configuration it was built with.
    """
    if version.status not in {"built", "live", "rejected"}:
        raise IndexVersionError(f"cannot {action} {version.collection!r}: its status is {version.status!r} (not a finished build)")
    if not query_compatible(version.index_config, config.index_config()):
        raise IndexVersionError(
            f"cannot {action} {version.collection!r}: it was built with {_query_side(version.index_config)}, the current "
            f"configuration queries with {_query_side(config.index_config())}; restore that configuration first"
        )


def _query_side(index_config: dict) -> str:
    return ", ".join(f"{key}={index_config.get(key)}" for key in QUERY_KEYS)


def promote(client: Any, config: RagConfig, registry: VersionRegistry, collection: str) -> None:
    """Point the live alias at ``collection`` and record it as live."""
    previous = live_collection(client, config.rag.store.alias)
    point_alias(client, config.rag.store.alias, collection)
    for v in registry.versions:
        if v.collection == previous and v.status == "live":
            v.status = "built"
    registry.get(collection).status = "live"
    registry.live_history.append(collection)
    registry.save()


def rollback(client: Any, config: RagConfig, registry: VersionRegistry, to: str | None = None) -> tuple[str | None, str]:
    """Point the alias back at the previous live version (or at ``to``). Returns (from, to).

    Raises:
        IndexVersionError: nothing to roll back to, or the target collection no longer exists.
    """
    alias = config.rag.store.alias
    current = reconcile_live(client, config, registry)
    if to is None:
        earlier = [c for c in registry.live_history if c != current]
        if not earlier:
            raise IndexVersionError(f"alias {alias!r} has no earlier live version to roll back to ({registry.path})")
        to = earlier[-1]
    target = registry.get(to)
    check_servable(config, target, f"roll back alias {alias!r} to")
    if not client.collection_exists(to):
        raise IndexVersionError(f"cannot roll back alias {alias!r} to {to!r}: the collection was deleted")
    point_alias(client, alias, to)
    if current:
        try:
            registry.get(current).status = "built"
        except IndexVersionError:
            pass  # a collection made outside OpsFabric: nothing to record
        # drop the rolled-back version from the history so a second rollback goes further back
        registry.live_history = [c for c in registry.live_history if c != current]
    target.status = "live"
    if not registry.live_history or registry.live_history[-1] != to:
        registry.live_history.append(to)
    registry.save()
    return current, to
