"""Which production batches the monitor has already looked at: one watermark file per dataset.

The monitor deployment's default run picks up *new* data: every file in the dataset's batch folder
(``dataset.data_dir`` + ``dataset.batch_pattern``) that the watermark does not list yet, or whose
content (md5) changed since. The watermark lives in the state folder,
``<state_dir>/watermarks/<dataset>.json``, and is only ever replaced whole (temp file + rename), so
a crash never leaves half a file. The previous version is kept beside it as ``<file>.bak``.

Two monitor runs at once never take the same batch: a run *claims* its batches under
``opsfabric.locking.exclusive`` (claims are written to the watermark), monitors them, and marks
each one monitored only after its monitoring finished. A batch whose monitoring failed is released
and picked up by the next run. A claim whose holder died (its process is gone, or for another host
after ``CLAIM_TTL_SECONDS``) is taken over.

Repair: a watermark that is not valid JSON or not shaped as below raises :class:`WatermarkError`
naming the file. Either restore ``<file>.bak`` or delete the file (the next run then monitors every
batch in the folder once more).

    {"dataset": "churn", "version": 1,
     "monitored": {"batch_05.parquet": {"md5": "...", "monitored_at": "...", "result": {...}}},
     "claims":    {"batch_06.parquet": {"md5": "...", "since": "...", "owner": {"pid": 1, "host": "h", ...}}}}
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from opsfabric.errors import OpsFabricError
from opsfabric.files import file_md5, write_atomic
from opsfabric.locking import exclusive, process_alive, process_start_ticks

WATERMARK_VERSION = 1
CLAIM_TTL_SECONDS = 6 * 3600  # a claim of another host is taken over after this (its liveness cannot be checked)


class WatermarkError(OpsFabricError):
    """The watermark file cannot be read as a watermark (corrupted, hand-edited, another dataset's)."""


@dataclass(frozen=True)
class BatchFile:
    """A batch file of the folder: its name relative to the data folder, full path and content hash."""

    name: str
    path: Path
    md5: str


@dataclass
class Watermark:
    """What a dataset's monitor has done: monitored batches (by name, with md5) and batches claimed right now."""

    dataset: str
    monitored: dict[str, dict[str, Any]] = field(default_factory=dict)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "version": WATERMARK_VERSION, "monitored": self.monitored, "claims": self.claims}


# ---- where things are ----------------------------------------------------------------------
def watermark_path(state_dir: Path, dataset: str) -> Path:
    """``<state_dir>/watermarks/<dataset>.json``."""
    return Path(state_dir) / "watermarks" / f"{dataset}.json"


def default_batch_pattern(batches: list[str], reference: str) -> str:
    """``batch_*`` plus the suffix of the configured batches (or of the reference): ``batch_*.parquet``."""
    suffixes = {Path(b).suffix for b in batches} or {Path(reference).suffix}
    return f"batch_*{suffixes.pop()}" if len(suffixes) == 1 else "batch_*"


def find_batch_files(data_dir: Path, pattern: str, exclude: set[Path] = frozenset()) -> list[BatchFile]:
    """Files under ``data_dir`` matching ``pattern``, in name order (batches are named in time order).

    Args:
        data_dir: the dataset's folder.
        pattern: a glob relative to it (``batch_*.parquet``, ``incoming/*.csv``).
        exclude: files never to return (the reference batch).
    """
    excluded = {Path(p).resolve() for p in exclude}
    found = sorted(p for p in Path(data_dir).glob(pattern) if p.is_file() and p.resolve() not in excluded)
    return [BatchFile(name=p.relative_to(data_dir).as_posix(), path=p, md5=file_md5(p)) for p in found]


# ---- reading and writing -------------------------------------------------------------------
def repair_hint(path: Path) -> str:
    return (
        f"restore the previous version ({path.name}.bak beside it: mv {path}.bak {path}) or delete {path} "
        "(the next monitor run then monitors every batch in the folder once more); see docs/control_room.md"
    )


def read_watermark(path: Path, dataset: str) -> Watermark:
    """The watermark at ``path``; an empty one if the file does not exist.

    Raises:
        WatermarkError: the file is not JSON, not shaped as a watermark, or belongs to another dataset.
    """
    path = Path(path)
    if not path.exists():
        return Watermark(dataset)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WatermarkError(f"watermark file {path} is corrupted: {exc}", hint=repair_hint(path)) from None
    problem = _shape_problem(raw, dataset)
    if problem:
        raise WatermarkError(f"watermark file {path} is not a watermark of dataset {dataset!r}: {problem}", hint=repair_hint(path))
    return Watermark(dataset, monitored=raw["monitored"], claims=raw.get("claims", {}))


def _shape_problem(raw: Any, dataset: str) -> str | None:
    if not isinstance(raw, dict):
        return f"top level is a {type(raw).__name__}, not an object"
    if raw.get("dataset") != dataset:
        return f"'dataset' is {raw.get('dataset')!r}"
    for key in ("monitored", "claims"):
        value = raw.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, dict) and isinstance(v.get("md5"), str) for v in value.values()):
            return f"'{key}' must map file names to objects with an 'md5'"
    return None


def write_watermark(path: Path, watermark: Watermark) -> None:
    """Replace the file atomically (temp file in the same folder, fsync, rename); keep the old one as ``.bak``."""
    write_atomic(Path(path), json.dumps(watermark.to_dict(), indent=2, sort_keys=True, default=str), keep_backup=True)


# ---- deciding ------------------------------------------------------------------------------
def this_owner(flow_run_id: str | None = None) -> dict[str, Any]:
    """Who claims: this process (pid + start time, so a reused pid is not mistaken for it) on this host."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start_ticks(os.getpid()), "flow_run_id": flow_run_id}


def claim_is_live(claim: dict[str, Any], now: datetime) -> bool:
    """A claim holds while its process lives (this host) or, for another host, for CLAIM_TTL_SECONDS."""
    owner = claim.get("owner") or {}
    alive = process_alive(owner.get("host"), owner.get("pid"), owner.get("started"))
    if alive is not None:
        return alive
    try:
        since = datetime.fromisoformat(claim["since"])
    except (KeyError, TypeError, ValueError):
        return False
    return now - since < timedelta(seconds=CLAIM_TTL_SECONDS)


def pending_batches(watermark: Watermark, files: list[BatchFile], now: datetime) -> list[BatchFile]:
    """Files not monitored yet (or changed since: another md5), and not claimed by a live run."""
    pending = []
    for batch in files:
        done = watermark.monitored.get(batch.name)
        if done and done.get("md5") == batch.md5:
            continue
        claim = watermark.claims.get(batch.name)
        if claim and claim_is_live(claim, now):
            continue
        pending.append(batch)
    return pending


# ---- the claim protocol ----------------------------------------------------------------------
@dataclass
class BatchFolder:
    """A dataset's batch folder and its watermark: what :func:`claim_new_batches` needs, nothing more."""

    dataset: str
    data_dir: Path
    pattern: str
    watermark: Path
    exclude: set[Path] = field(default_factory=set)

    @property
    def lock_resource(self) -> str:
        return f"watermark-{self.dataset}"


def batch_folder(settings) -> BatchFolder:
    """The configured dataset's batch folder, pattern and watermark file (``settings``: opsfabric Settings)."""
    ds = settings.dataset
    return BatchFolder(
        dataset=ds.name,
        data_dir=settings.path(ds.data_dir),
        pattern=ds.batch_pattern or default_batch_pattern(ds.batches, ds.reference),
        watermark=watermark_path(settings.state_dir, ds.name),
        exclude={settings.path(ds.reference)},
    )


def record_monitored(settings, path: Path, result: dict[str, Any] | None = None, folder: BatchFolder | None = None) -> bool:
    """Mark ``path`` monitored when it is one of the watermark's batch files (True), e.g. after ``make run``, the
    weekly pipeline or a monitor run on a named batch: the daily run then does not monitor it again.

    A file outside the folder or pattern is left alone (False).
    """
    folder = folder or batch_folder(settings)
    resolved = Path(path).resolve()
    excluded = {Path(p).resolve() for p in folder.exclude}
    found = next((p for p in Path(folder.data_dir).glob(folder.pattern) if p.is_file() and p.resolve() == resolved), None)
    if found is None or resolved in excluded:
        return False
    match = BatchFile(name=found.relative_to(folder.data_dir).as_posix(), path=found, md5=file_md5(found))
    with exclusive(settings, folder.lock_resource, purpose=f"mark {match.name} monitored"):
        watermark = read_watermark(folder.watermark, folder.dataset)
        watermark.monitored[match.name] = {
            "md5": match.md5,
            "monitored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "result": result or {},
        }
        write_watermark(folder.watermark, watermark)
    return True


class Claim:
    """The batches one monitor run took; :meth:`mark_monitored` records each finished one."""

    def __init__(self, settings, folder: BatchFolder, batches: list[BatchFile]):
        self.settings, self.folder, self.batches = settings, folder, batches
        self._open = {b.name for b in batches}

    def mark_monitored(self, batch: BatchFile, result: dict[str, Any] | None = None) -> None:
        """Record ``batch`` as monitored (with its md5 and a summary of the result) and drop its claim."""
        with exclusive(self.settings, self.folder.lock_resource, purpose=f"mark {batch.name} monitored"):
            watermark = read_watermark(self.folder.watermark, self.folder.dataset)
            watermark.claims.pop(batch.name, None)
            watermark.monitored[batch.name] = {
                "md5": batch.md5,
                "monitored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "result": result or {},
            }
            write_watermark(self.folder.watermark, watermark)
        self._open.discard(batch.name)

    def release_unfinished(self) -> list[str]:
        """Drop the claims of the batches not marked monitored, so the next run retries them."""
        if not self._open:
            return []
        released = sorted(self._open)
        with exclusive(self.settings, self.folder.lock_resource, purpose="release unfinished batches"):
            watermark = read_watermark(self.folder.watermark, self.folder.dataset)
            for name in released:
                watermark.claims.pop(name, None)
            write_watermark(self.folder.watermark, watermark)
        self._open.clear()
        return released


@contextmanager
def claim_new_batches(settings, folder: BatchFolder | None = None, owner: dict[str, Any] | None = None) -> Iterator[Claim]:
    """Claim every new batch of the folder for this run; on exit, release those not marked monitored.

    Args:
        settings: opsfabric Settings (the lock and the state folder).
        folder: default :func:`batch_folder` of ``settings``.
        owner: who claims (default: this process, :func:`this_owner`).

    Raises:
        WatermarkError: the watermark file is corrupted (nothing is claimed).
    """
    folder = folder or batch_folder(settings)
    with exclusive(settings, folder.lock_resource, purpose="claim new batches"):
        watermark = read_watermark(folder.watermark, folder.dataset)
        now = datetime.now(timezone.utc)
        batches = pending_batches(watermark, find_batch_files(folder.data_dir, folder.pattern, folder.exclude), now)
        for batch in batches:
            watermark.claims[batch.name] = {"md5": batch.md5, "since": now.isoformat(timespec="seconds"), "owner": owner or this_owner()}
        if batches:
            write_watermark(folder.watermark, watermark)
    claim = Claim(settings, folder, batches)
    try:
        yield claim
    finally:
        claim.release_unfinished()
