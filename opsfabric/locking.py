"""One lock for every alias move and registry write, across processes (and across hosts with Prefect).

Two implementations, chosen by configuration (``orchestration.lock.kind``):

* ``file`` (the embedded default): an ``flock`` on ``<state_dir>/locks/<resource>.lock``. The kernel
  releases it when the holder exits, ``kill -9`` included, so a crashed run never leaves it taken.
  It covers every process on one machine that shares the state folder.
* ``prefect``: a Prefect global concurrency limit of 1 slot named ``<prefix>-<resource>``, for
  several machines sharing one Prefect server. Prefect leases the slot and renews the lease while
  the holder lives; a killed holder's lease expires and the slot frees itself.

The lock is re-entrant within a thread (a registry write inside an alias move does not deadlock).
Holding it is not enough to be right: callers re-read what they decided on after taking it and stop
(or re-decide) if it changed (compare-and-set; see ``opsfabric.ml.promotion`` and ``opsfabric.rag.versions``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from opsfabric.errors import LockTimeoutError

if TYPE_CHECKING:
    from opsfabric.settings import LockSettings, Settings

log = logging.getLogger(__name__)

_HELD = threading.local()  # resource -> depth, per thread (re-entrancy)
POLL_SECONDS = 0.05


def _held() -> dict[str, int]:
    if not hasattr(_HELD, "depth"):
        _HELD.depth = {}
    return _HELD.depth


def _safe(resource: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", resource)


@contextmanager
def exclusive(settings: "Settings", resource: str, *, purpose: str) -> Iterator[None]:
    """Hold the lock on ``resource`` (e.g. ``ml-registry-churn-classifier``) for the block.

    Args:
        settings: where the lock lives (``orchestration.lock`` and ``state_dir``).
        resource: what is guarded; one name per registry or alias.
        purpose: said in logs and in the error another waiter gets.

    Raises:
        LockTimeoutError: another holder kept it longer than ``orchestration.lock.timeout_seconds``;
            the message names the resource and, for file locks, the holder (pid, host, purpose).
    """
    held = _held()
    if held.get(resource):
        held[resource] += 1
        try:
            yield
        finally:
            held[resource] -= 1
        return
    config = settings.orchestration.lock
    if config.kind == "prefect":
        cm = _prefect_lock(config, resource, purpose)
    else:
        cm = _file_lock(settings.state_dir / "locks", resource, purpose, config.timeout_seconds)
    with cm:
        held[resource] = 1
        try:
            yield
        finally:
            held.pop(resource, None)


@contextmanager
def _file_lock(lock_dir: Path, resource: str, purpose: str, timeout: float) -> Iterator[None]:
    import fcntl

    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{_safe(resource)}.lock"
    owner_path = path.with_suffix(".owner.json")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"lock {resource!r} ({path}) is held by {_describe_owner(owner_path)}; waited {timeout:.0f} s to {purpose}",
                        hint="wait for that run to finish, or raise orchestration.lock.timeout_seconds; "
                        "a crashed holder releases the lock by itself (the kernel drops it when the process dies)",
                    ) from None
                if not waited:
                    log.info("waiting for lock %s (held by %s) to %s", resource, _describe_owner(owner_path), purpose)
                    waited = True
                time.sleep(POLL_SECONDS)
        owner_path.write_text(json.dumps(_owner(purpose)))
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def process_start_ticks(pid: int) -> int | None:
    """A running process's start time in clock ticks since boot (Linux), to tell a live pid from a reused one.

    None if there is no such process, or only its zombie (killed, not yet reaped by its parent).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(host: str | None, pid: int | str | None, started: int | None) -> bool | None:
    """Whether the process ``pid`` that started at ``started`` (clock ticks) still runs on ``host``.

    True/False on this host (same pid *and* start time = the same process); None for another host,
    an unknown pid, or a machine without ``/proc`` to tell.
    """
    if host != socket.gethostname() or not pid:
        return None
    now = process_start_ticks(int(pid))
    if now is None:  # no such process, or no /proc to tell: only the former proves it dead
        return False if Path("/proc/self/stat").exists() else None
    return now == started


def live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live (non-zombie) process of this machine (Linux /proc)."""
    table: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                table[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a live member (``killpg(pgid, 0)`` also succeeds for zombies)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(group == pgid for _, group in live_processes().values())


def descendant_groups(pid: int) -> list[int]:
    """Process groups of ``pid``'s live descendants other than its own group, parents first (Linux /proc).

    A Prefect worker starts each flow run in a session of its own: stopping the worker's process
    group leaves its flow runs running. Their groups are found here, from the parent links.
    """
    parents = live_processes()
    own = parents.get(pid, (0, pid))[1]
    found, frontier, groups = {pid}, [pid], []
    while frontier:
        children = [p for p, (ppid, _) in parents.items() if ppid in frontier and p not in found]
        found.update(children)
        frontier = children
        for child in children:
            group = parents[child][1]
            if group != own and group not in groups:
                groups.append(group)
    return groups


def _owner(purpose: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv[:3]),
        "purpose": purpose,
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _describe_owner(owner_path: Path) -> str:
    try:
        owner = json.loads(owner_path.read_text())
    except (OSError, ValueError):
        return "another process"
    return f"pid {owner.get('pid')} on {owner.get('host')} ({owner.get('purpose')}, since {owner.get('since')})"


@contextmanager
def _prefect_lock(config: "LockSettings", resource: str, purpose: str) -> Iterator[None]:
    from prefect.concurrency.sync import concurrency

    name = f"{config.prefect_limit_prefix}-{_safe(resource)}"
    _ensure_prefect_limit(name)
    try:
        with concurrency(name, occupy=1, timeout_seconds=config.timeout_seconds, lease_duration=config.lease_seconds, strict=True):
            yield
    except TimeoutError as exc:
        raise LockTimeoutError(
            f"Prefect global concurrency limit {name!r} stayed taken for {config.timeout_seconds:.0f} s; could not {purpose}",
            hint="see the holder under Concurrency in the Prefect UI; a crashed holder's lease expires by itself",
        ) from exc


_CREATED: set[str] = set()


def _ensure_prefect_limit(name: str) -> None:
    """Create the one-slot global concurrency limit if the server does not have it yet."""
    if name in _CREATED:
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # another process created it first
    _CREATED.add(name)
