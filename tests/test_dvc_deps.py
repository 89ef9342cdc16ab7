"""dvc.yaml stages depend on every OpsFabric module they run, so a code change reruns what it touches.

The module set of a stage is found statically: the imports inside its ``stage_<name>`` function,
then every ``opsfabric`` import of those modules, transitively (imports inside functions count:
that is conservative, never missing a module that may run).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from opsfabric.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit

STAGE_CMD = re.compile(r"python -m (opsfabric(?:\.\w+)*\.stages) (\w+)")


def _module_file(module: str) -> Path | None:
    base = PROJECT_ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(node: ast.AST, current: str) -> set[str]:
    """Dotted names of the opsfabric modules imported anywhere under ``node``."""
    found: set[str] = set()
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            found |= {a.name for a in item.names if a.name.startswith("opsfabric")}
        elif isinstance(item, ast.ImportFrom) and item.module:
            module = item.module if item.level == 0 else ".".join(current.split(".")[: -item.level] + [item.module])
            if not module.startswith("opsfabric"):
                continue
            found.add(module)
            # `from opsfabric.ml import training` imports a module, not a name
            found |= {f"{module}.{a.name}" for a in item.names if _module_file(f"{module}.{a.name}")}
    return {m for m in found if _module_file(m)}


def stage_modules(stages_module: str, stage: str) -> set[Path]:
    """Files of every opsfabric module the stage may run (the stages module itself included)."""
    tree = ast.parse(_module_file(stages_module).read_text())
    function = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == f"stage_{stage}"), None
    )
    assert function is not None, f"{stages_module} has no function stage_{stage}"
    todo = _imports(function, stages_module)
    # the module-level imports of the stages module run too (not the other stages' functions)
    todo |= _imports(ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[]), stages_module)
    parts = stages_module.split(".")
    todo |= {".".join(parts[:i]) for i in range(1, len(parts)) if _module_file(".".join(parts[:i]))}
    seen: set[str] = {stages_module}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}  # packages' __init__ run first
        todo |= {p for p in parents if _module_file(p)} - seen
        todo |= _imports(ast.parse(_module_file(module).read_text()), module) - seen
    return {_module_file(m).relative_to(PROJECT_ROOT) for m in seen}


def _dvc_stages() -> list[tuple[str, str, str, list[str]]]:
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    rows = []
    for name, stage in dvc["stages"].items():
        match = STAGE_CMD.search(stage["cmd"])
        if match:
            rows.append((name, match.group(1), match.group(2), [str(d) for d in stage.get("deps", [])]))
    return rows


@pytest.mark.parametrize("name, module, stage, deps", _dvc_stages(), ids=[r[0] for r in _dvc_stages()])
def test_stage_depends_on_every_module_it_runs(name, module, stage, deps):
    def covered(path: Path) -> bool:
        return any(path == Path(d) or Path(d) in path.parents for d in deps)

    missing = sorted(str(p) for p in stage_modules(module, stage) if not covered(p))
    assert not missing, f"dvc.yaml stage {name!r} runs these modules but does not depend on them: {missing}"


def test_closure_finds_modules_imported_inside_functions():
    # a stage imports its step modules inside the function: the closure must see them
    modules = stage_modules("opsfabric.rag.stages", "ingest")
    assert Path("opsfabric/rag/stages.py") in modules and Path("opsfabric/settings.py") in modules
    assert any(p.name == "corpus.py" for p in modules)
