"""Qdrant behind a few calls: the client, collections, the alias primitive, point scroll and copy.

Local mode (a folder under the state dir) is the default; ``rag.store.url`` points at a server.
Qdrant local mode allows one client per folder. Within a process every caller shares one client:
:func:`connected` counts its users and closes a local client when the last one leaves, so the
folder is free for the next process as soon as an operation ends (the index lock of
:mod:`opsfabric.rag.versions` makes that next process wait instead of failing). A second process
that opens the folder while it is held gets :class:`IndexLockedError` naming the process holding it.

Nothing here knows about index versions or the registry; that is :mod:`opsfabric.rag.versions`.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from opsfabric.rag.errors import IndexLockedError, IndexVersionError
from opsfabric.rag.settings import RagConfig

log = logging.getLogger(__name__)
OWNER_FILE = "opsfabric-owner.json"
# llama-index's QdrantVectorStore writes these names when hybrid is enabled; queries use them too.
DENSE_VECTOR = "text-dense"
SPARSE_VECTOR = "text-sparse-new"


# ---- the client ---------------------------------------------------------------------------------
@dataclass
class _Handle:
    client: Any
    users: int = 0  # open `connected` blocks
    pinned: bool = False  # opened by `open_client`: stays open until `close_client`


_HANDLES: dict[str, _Handle] = {}
_HANDLES_LOCK = threading.Lock()


def is_local(config: RagConfig) -> bool:
    """Whether the store is a local folder (one process at a time) rather than a server."""
    return not config.rag.store.url


def _key(config: RagConfig) -> str:
    return config.rag.store.url or str(config.qdrant_path.resolve())


def _handle(config: RagConfig) -> _Handle:
    """The process's handle for the configured store, opening the client if needed. Call under _HANDLES_LOCK."""
    key = _key(config)
    handle = _HANDLES.get(key)
    if handle is None:
        handle = _HANDLES[key] = _Handle(_open(config))
    return handle


def _open(config: RagConfig) -> Any:
    from qdrant_client import QdrantClient

    store = config.rag.store
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
                "Qdrant local mode allows one process at a time",
                hint="wait for it to finish (OpsFabric's own runs wait for each other by themselves), "
                "or configure a server with rag.store.url",
            ) from exc
        (path / OWNER_FILE).write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv[:4], "since": _now()})
        )
    atexit.register(_close_quietly, client)
    return client


@contextmanager
def connected(config: RagConfig) -> Iterator[Any]:
    """The process's client for the configured store, for the duration of the block.

    A local client is closed when the last block using it ends (unless :func:`open_client` pinned
    it), which releases the folder for other processes. Callers that must not be interrupted by
    another process take the index lock first (:func:`opsfabric.rag.versions.index_session`).

    Raises:
        IndexLockedError: local mode and another process holds the folder.
    """
    with _HANDLES_LOCK:
        handle = _handle(config)
        handle.users += 1
    try:
        yield handle.client
    finally:
        with _HANDLES_LOCK:
            handle.users -= 1
            closing = handle.users == 0 and not handle.pinned and is_local(config)
            if closing:
                _HANDLES.pop(_key(config), None)
        if closing:
            handle.client.close()


def open_client(config: RagConfig) -> Any:
    """The process's client, kept open until :func:`close_client` (tests, benchmarks, interactive use).

    A pinned local client holds the folder without the index lock: another process then gets
    :class:`IndexLockedError` instead of waiting. Pipeline code uses :func:`connected` through
    :func:`opsfabric.rag.versions.index_session`.
    """
    with _HANDLES_LOCK:
        handle = _handle(config)
        handle.pinned = True
        return handle.client


def close_client(config: RagConfig) -> None:
    """Close and forget the process's client for this store (releases the local folder)."""
    with _HANDLES_LOCK:
        handle = _HANDLES.pop(_key(config), None)
    if handle is not None:
        handle.client.close()


def close_all_clients() -> None:
    """Close every client of this process (tests: each test uses its own folders)."""
    with _HANDLES_LOCK:
        handles = list(_HANDLES.values())
        _HANDLES.clear()
    for handle in handles:
        handle.client.close()


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - interpreter shutdown: modules may already be gone
        pass


def _describe_owner(path: Path) -> str:
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return "owner unknown"
    return f"pid {owner.get('pid')} on {owner.get('host')}, command {' '.join(owner.get('argv') or [])!r}, since {owner.get('since')}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- collections and the alias --------------------------------------------------------------------
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


def alias_target(client: Any, alias: str) -> str | None:
    """The collection ``alias`` points at, or None."""
    for item in client.get_aliases().aliases:
        if item.alias_name == alias:
            return item.collection_name
    return None


def resolve_collection(client: Any, name: str) -> str:
    """``name`` itself, or the collection it points at when it is an alias (local mode needs this)."""
    if client.collection_exists(name):
        return name
    target = alias_target(client, name)
    if target is None:
        raise IndexVersionError(f"no collection or alias named {name!r} in the Qdrant store")
    return target


def move_alias(client: Any, alias: str, collection: str) -> None:
    """Point ``alias`` at ``collection`` in one atomic alias update (readers never see no alias)."""
    from qdrant_client import models

    actions: list[Any] = []
    if alias_target(client, alias) is not None:
        actions.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    actions.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
    client.update_collection_aliases(change_aliases_operations=actions)


# ---- points -----------------------------------------------------------------------------------
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


def scroll_payloads(client: Any, collection: str) -> list[tuple[str, dict]]:
    """Every point's (id, payload) in the collection."""
    return [(str(p.id), p.payload or {}) for p in iter_points(client, collection, batch=1024)]


def chunk_text(payload: dict) -> str | None:
    """The chunk text llama-index stored in a point's payload (``_node_content``), or None."""
    return json.loads(payload.get("_node_content") or "{}").get("text")


def copy_points(client: Any, source: str, target: str, *, on_batch: Any = None) -> int:
    """Copy every point (vector and payload, same ids) from ``source`` to ``target``; idempotent.

    In local mode, call it inside :func:`bulk_writes` on ``target``: that is what makes it cheap.

    Args:
        on_batch: called after each batch is written (the build renews its lease there).
    """
    from qdrant_client import models

    copied = 0
    for points in point_batches(client, source, with_vectors=True):
        client.upsert(target, [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points], wait=True)
        copied += len(points)
        if on_batch is not None:
            on_batch()
    return copied


@contextmanager
def bulk_writes(client: Any, collection: str) -> Iterator[None]:
    """Write ``collection``, which no reader uses yet, without an fsync per point; durable when the block ends.

    Qdrant local mode stores each upserted point in its own SQLite transaction
    (``qdrant_client/local/persistence.py``: ``with self.storage:`` per point), and SQLite's default
    mode (rollback journal, ``synchronous=FULL``) fsyncs several times per commit: measured 1.3-18 ms
    per point on a 2-core VM, 90% of copying a version. In WAL mode with ``synchronous=NORMAL`` a
    commit is an append to the WAL without fsync, 0.4-0.6 ms per point. That mode is safe against a
    killed process (SQLite recovers the WAL when the folder is opened again); a power cut may lose
    the last commits but never corrupts the file. When the block ends, the WAL is checkpointed with
    fsync and the file returns to Qdrant's own mode (rollback journal, ``synchronous=FULL``), so a
    build marks itself finished (docstore, registry) only after its points are on disk.

    Does nothing on a server (it batches upserts itself) or if qdrant-client's local internals change.
    """
    connection = _local_sqlite(client, collection)
    if connection is None:
        yield
        return
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # fsyncs the WAL, copies it into the file, fsyncs the file
        connection.execute("PRAGMA journal_mode=DELETE")


def _local_sqlite(client: Any, collection: str) -> Any:
    """The SQLite connection qdrant-client's local mode stores ``collection`` in, or None (server, other internals)."""
    import sqlite3

    local = getattr(client, "_client", None)
    persistence = getattr(getattr(local, "collections", {}).get(collection), "storage", None)
    connection = getattr(persistence, "storage", None)
    return connection if isinstance(connection, sqlite3.Connection) else None
