"""State files written whole or not at all, with the previous good version kept for repair."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from opsfabric.errors import OpsFabricError


def file_md5(path: Path) -> str:
    """MD5 of a file's bytes: the hash DVC 3 records for a file output (``dvc.lock``, ``.dir`` entries)."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_prompt_file(path: Path, required: tuple[str, ...], *, what: str, error: type[OpsFabricError],
                     hint: str | None = None) -> tuple[dict, str]:
    """A versioned prompt file's fields and the sha256 of its bytes (what runs record).

    Raises ``error`` naming ``what``, the file and the missing fields: unreadable, not YAML, not a
    mapping, or without one of ``required``.
    """
    import yaml

    try:
        raw = Path(path).read_bytes()
        data = yaml.safe_load(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{what} {path}: cannot read: {exc}", hint=hint) from exc
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise error(f"{what} {path}: missing field(s) {missing}")
    return data, hashlib.sha256(raw).hexdigest()


def backup_path(path: Path) -> Path:
    """Where the version a save replaced is kept: ``<name>.bak``."""
    return Path(path).with_name(Path(path).name + ".bak")


def write_atomic(path: Path, text: str, *, keep_backup: bool = False) -> Path:
    """Replace ``path`` with ``text``: a temporary file in the same folder, fsync, then a rename.

    A crash leaves the old file or the new one, never half of one. With ``keep_backup`` the file
    being replaced is first copied to :func:`backup_path` (also atomically), but only when it still
    parses as JSON: a damaged file never replaces the last good backup.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_backup and path.exists():
        old = path.read_bytes()
        if _is_json(old):
            _replace(backup_path(path), old)
    _replace(path, text.encode("utf-8"))
    return path


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except (UnicodeDecodeError, ValueError):
        return False
