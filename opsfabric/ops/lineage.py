"""Lineage: where a model version, an index version or a run came from, and what a data version produced.

Pure functions over records (:mod:`opsfabric.ops.records`): a *source* answers ``run(id)``,
``version(name, v)``, ``alias(name, alias)``, ``versions_of_run(id)``, ``all_runs()``,
``index_registry()``, ``dvc_lock(commit)`` and ``flow_run(id)`` (``PlatformRecords`` reads MLflow,
the registry, git and the Prefect API; ``StaticRecords`` holds records in memory).

The backward walk needs no Prefect event (events are pruned after 7 days):

    model version → its MLflow run → dataset inputs (digest, DVC md5) → dvc.lock at the run's git commit
    (the stages that list those bytes, with their deps, outs and params) → the Prefect flow run and
    deployment named by the run's tags (details from the Prefect API when it is reachable).

References (:func:`parse_ref`):

* ``models:/<name>@<alias>``, ``models:/<name>/<version>``: a registered model version;
* ``index:<alias>`` (``index:docs-live``: the live version) or ``index:<collection>`` (``index:docs-v0003``);
* ``run:<run id>`` or ``runs:/<run id>``: any MLflow run (training, monitoring, rag-index, rag-eval,
  agent-regression); a bare 32-hex run id is accepted too;
* ``data:<path>`` or ``data:<md5>``: forward: which runs read these bytes and what they produced.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from opsfabric.errors import OpsFabricError
from opsfabric.ops.records import DvcLock, DvcStage, IndexRecord, RunRecord, VersionRecord, clean_commit

REF_SYNTAX = (
    "models:/<name>@<alias> | models:/<name>/<version> | index:<alias or collection> | "
    "run:<mlflow run id> | data:<path or md5>"
)
_HEX = re.compile(r"^[0-9a-f]{16,64}(\.dir)?$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_DVC_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
PRODUCER = "https://github.com/opsfabric/opsfabric/tree/main/opsfabric/ops/lineage.py"
RUN_EVENT_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
PARENT_FACET_SCHEMA = "https://openlineage.io/spec/facets/1-0-1/ParentRunFacet.json#/$defs/ParentRunFacet"
OL_EVENT_TYPE = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "ABORT", "RUNNING": "RUNNING", "SCHEDULED": "START"}
# Metrics and tags worth showing on a run node (the JSON keeps every tag).
_SHOWN_METRICS = re.compile(r"^(eval_|gate_|drift_share$|current_|reference_|pass_rate$|failed$|mean_f1$|hit_at_5$|mrr$|context_recall$)")
_SHOWN_TAGS = re.compile(r"^(gate\.(decision|version|champion_version)$|rag\.(collection|gate\.outcome)$|opsfabric\.(trigger|batch|champion_version|source)$|drift\.retrain$)")


class LineageError(OpsFabricError):
    """A lineage reference is malformed or names nothing the stores know."""


@dataclass(frozen=True)
class LineageRef:
    """A parsed reference: what to trace and in which direction."""

    kind: Literal["model", "index", "run", "data"]
    name: str
    selector: str | None = None  # model: "@alias" or the version
    raw: str = ""


def parse_ref(ref: str) -> LineageRef:
    """Parse a lineage reference (syntax in the module docstring).

    Raises:
        LineageError: the reference matches no syntax; the message names it.
    """
    text = ref.strip()
    if text.startswith("models:/"):
        body = text.removeprefix("models:/")
        if "@" in body:
            name, alias = body.split("@", 1)
            if name and alias and "/" not in name:
                return LineageRef("model", name, "@" + alias, ref)
        elif body.count("/") == 1:
            name, version = body.split("/")
            if name and version.isdigit():
                return LineageRef("model", name, version, ref)
    elif text.startswith("index:") and text.removeprefix("index:"):
        return LineageRef("index", text.removeprefix("index:"), raw=ref)
    elif text.startswith(("run:", "runs:/")):
        run_id = text.removeprefix("run:").removeprefix("runs:/").split("/")[0]
        if run_id:
            return LineageRef("run", run_id, raw=ref)
    elif text.startswith("data:") and text.removeprefix("data:"):
        return LineageRef("data", text.removeprefix("data:"), raw=ref)
    elif _RUN_ID.match(text):
        return LineageRef("run", text, raw=ref)
    raise LineageError(f"unknown lineage reference {ref!r}", hint=f"use one of: {REF_SYNTAX}")


# ---- the graph --------------------------------------------------------------------------------
@dataclass
class Node:
    """One thing in the lineage tree.

    Attributes:
        kind: model_version | run | dataset | dvc_stage | git_commit | prefect_flow_run |
            prefect_deployment | index_version.
        details: short lines printed under the label; ``attrs`` holds the full data (JSON).
        notes: what could not be found, and why (missing tags, unknown commit, Prefect not consulted).
    """

    kind: str
    id: str
    label: str
    details: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    children: list["Node"] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def find(self, kind: str) -> list["Node"]:
        """Every node of ``kind`` in this subtree (depth first)."""
        found = [self] if self.kind == kind else []
        for child in self.children:
            found += child.find(kind)
        return found


@dataclass
class LineageResult:
    """The tree, plus each visited run's inputs and outputs as (namespace, name) for OpenLineage."""

    ref: str
    direction: Literal["backward", "forward"]
    root: Node
    runs: dict[str, RunRecord] = field(default_factory=dict)
    inputs: dict[str, list[tuple[str, str, dict]]] = field(default_factory=dict)
    outputs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "direction": self.direction, "tree": asdict(self.root)}


@dataclass(frozen=True)
class StageMatch:
    """A ``dvc.lock`` stage that lists a file: as dep or out, and how it matched."""

    stage: DvcStage
    role: Literal["dep", "out"]
    path: str
    recorded_md5: str | None
    how: str  # "same md5" | "same path, different md5" | "same path" | "inside folder <path>"

    @property
    def same_bytes(self) -> bool:
        return self.how == "same md5"


def dvc_matches(lock: DvcLock, *, md5: str | None, path: str | None) -> list[StageMatch]:
    """Stages of ``lock`` whose deps or outs are these bytes (same md5) or this path (or a folder holding it).

    ``path`` is relative to the project root (as ``dvc.lock`` writes it); an absolute path matches nothing.
    """
    matches = []
    for stage in lock.stages.values():
        for role, files in (("dep", stage.deps), ("out", stage.outs)):
            for f in files:
                if md5 and f.md5 and f.md5 == md5:
                    how = "same md5"
                elif path and f.path == path:
                    if not md5:
                        how = "same path"
                    elif not _DVC_MD5.match(md5) or (bool(f.md5) and f.md5.endswith(".dir") != md5.endswith(".dir")):
                        # a folder's DVC hash (".dir") is over DVC's file listing; a run's folder digest is not
                        how = "same path (the run's hash is OpsFabric's own, not comparable with DVC's md5)"
                    else:
                        how = "same path, different md5 (the file changed since dvc.lock was written)"
                elif path and f.md5 and f.md5.endswith(".dir") and Path(path).is_relative_to(f.path):
                    how = f"inside folder {f.path}"
                else:
                    continue
                matches.append(StageMatch(stage, role, f.path, f.md5, how))  # type: ignore[arg-type]
    return sorted(matches, key=lambda m: (not m.same_bytes, m.stage.name))


def relative_path(source: str | None, project_root: Path | None) -> str | None:
    """``source`` relative to the project root (how dvc.lock names files), or as given if outside it."""
    if not source:
        return None
    path = Path(source)
    if project_root is not None and path.is_absolute() and path.is_relative_to(project_root):
        return path.relative_to(project_root).as_posix()
    return path.as_posix()


def _stamp(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else None


def _short(text: str | None, n: int = 8) -> str:
    return (text or "?")[:n]


class _Walker:
    """One lineage query: the source, the settings it needs, and what it has visited."""

    def __init__(self, source: Any, *, project_root: Path | None, model_name: str, path_hints: dict[str, str]):
        self.source = source
        self.project_root = project_root
        self.model_name = model_name
        self.path_hints = path_hints
        self.visited: set[str] = set()
        self.result: LineageResult | None = None

    # -- nodes ----------------------------------------------------------------------------------
    def model_node(self, version: VersionRecord, *, walk: bool) -> Node:
        tags = version.tags
        score = {k: v for k, v in tags.items() if k.startswith("eval_")}
        aliases = f" [@{', @'.join(version.aliases)}]" if version.aliases else ""
        node = Node(
            "model_version",
            version.ref,
            f"model {version.name} v{version.version}{aliases}: gate {version.decision or 'unknown'}, "
            + ", ".join(f"{k.removeprefix('eval_')} {v}" for k, v in score.items()),
            details=[f"registered {_stamp(version.created)}", *([f"gate: {tags['gate.reasons']}"] if "gate.reasons" in tags else [])],
            attrs={"name": version.name, "version": version.version, "aliases": list(version.aliases), "run_id": version.run_id,
                   "source": version.source, "created": _stamp(version.created), "tags": version.tags,
                   "url": self.source.links.model_url(version.name, version.version)},
        )
        if walk:
            run = self.source.run(version.run_id) if version.run_id else None
            if run is None:
                node.notes.append(f"MLflow run {version.run_id or '(none recorded)'} of this version is not in the store (deleted?)")
            else:
                node.children.append(self.run_node(run, root=False))
        return node

    def index_node(self, version: IndexRecord, *, walk: bool, live: str | None) -> Node:
        headline = {k: v for k, v in version.eval_scores.items() if k in ("holdout.hit_at_5", "holdout.mrr", "holdout.context_recall")}
        node = Node(
            "index_version",
            version.collection,
            f"index {version.collection}: {version.status}{' (live)' if version.collection == live and version.status != 'live' else ''}, corpus {version.corpus_hash}, "
            f"index config {version.config_hash}",
            details=[f"built {version.built_at}", *(f"{k} {v:.4f}" for k, v in headline.items()),
                     *([f"gate: {'; '.join(version.decision.get('reasons', []))}"] if version.decision else [])],
            attrs={k: v for k, v in asdict(version).items()},
        )
        if not walk:
            return node
        for label, run_id in (("index run", version.mlflow_run_id), ("eval run", version.eval_run_id)):
            run = self.source.run(run_id) if run_id else None
            if run is not None:
                node.children.append(self.run_node(run, root=False))
            else:
                node.notes.append(f"{label} {run_id or '(none recorded)'}: not in the MLflow store")
        if version.base_collection:
            base = self.source.index_registry().find(version.base_collection)
            if base is not None:
                child = self.index_node(base, walk=False, live=live)
                child.notes.append("base of an incremental build: its unchanged chunks were copied; trace it with index:" + base.collection)
                node.children.append(child)
        return node

    def run_node(self, run: RunRecord, *, root: bool) -> Node:
        assert self.result is not None
        self.result.runs[run.run_id] = run
        url = self.source.links.run_url(run)
        metrics = dict(list({k: round(v, 6) for k, v in sorted(run.metrics.items()) if _SHOWN_METRICS.match(k) and "tune." not in k}.items())[:8])
        tags = {k: v for k, v in sorted(run.tags.items()) if _SHOWN_TAGS.match(k)}
        node = Node(
            "run",
            run.run_id,
            f"run {run.run_id} {run.experiment}/{run.name}: {run.status}, started {_stamp(run.started)}",
            details=[*([f"MLflow {url}"] if url else []), *(f"{k} = {v}" for k, v in tags.items()),
                     *([", ".join(f"{k} {v:g}" for k, v in metrics.items())] if metrics else [])],
            attrs={"run_id": run.run_id, "experiment": run.experiment, "experiment_id": run.experiment_id, "name": run.name,
                   "status": run.status, "started": _stamp(run.started), "ended": _stamp(run.ended), "url": url,
                   "tags": run.tags, "metrics": run.metrics, "params": run.params},
        )
        if run.run_id in self.visited:
            node.notes.append("shown above")
            return node
        self.visited.add(run.run_id)
        commit, dirty = clean_commit(run.git_commit)
        lock = self.source.dvc_lock(commit) if commit else None
        node.children.append(self.commit_node(run, commit, dirty, lock))
        node.children += self.data_nodes(run, lock)
        node.children += self.used_nodes(run)
        node.children.append(self.flow_run_node(run))
        produced = self.produced(run)
        if root:
            node.children += produced
        return node

    def commit_node(self, run: RunRecord, commit: str | None, dirty: bool, lock: DvcLock | None) -> Node:
        if commit is None:
            return Node("git_commit", "unknown", "code: commit unknown", notes=[f"run has no usable opsfabric.git_commit tag ({run.git_commit!r})"])
        node = Node(
            "git_commit", commit, f"code: git commit {commit}{' (work tree had uncommitted changes)' if dirty else ''}",
            attrs={"commit": commit, "dirty": dirty, "dvc_lock": lock.where if lock else None},
        )
        if lock is not None and lock.missing:
            node.notes.append(f"dvc.lock at this commit: {lock.missing}")
        elif dirty:
            node.notes.append("dvc.lock is read at the commit; uncommitted changes of that time are not in git")
        return node

    def data_nodes(self, run: RunRecord, lock: DvcLock | None) -> list[Node]:
        """One node per file the run read: its dataset inputs (grouped by file) and ``dvc.md5.*`` tags not among them."""
        assert self.result is not None
        inputs = self.result.inputs.setdefault(run.run_id, [])
        by_file: dict[tuple[str | None, str | None], list] = {}
        for item in run.inputs:
            by_file.setdefault((item.source, item.md5), []).append(item)
        nodes = []
        seen_md5 = set()
        for (source, md5), items in by_file.items():
            seen_md5.add(md5)
            rel = relative_path(source, self.project_root)
            uses = ", ".join(f"{i.name} ({i.context}, digest {i.digest})" for i in items)
            node = Node("dataset", md5 or source or "?", f"data: {rel or '?'} md5 {md5 or 'not recorded'}", details=[f"as {uses}"],
                        attrs={"path": rel, "source": source, "md5": md5, "inputs": [asdict(i) for i in items]})
            self.attach_stages(node, lock, md5=md5, path=rel)
            nodes.append(node)
            inputs.append(("file", source or rel or "?", {"md5": md5} if md5 else {}))
        for name, md5 in run.data_md5.items():
            if md5 in seen_md5:
                continue
            hint = self.path_hints.get(name) or (run.params.get("corpus_path") if name == "rag_corpus" else None)
            rel = relative_path(hint, self.project_root)
            node = Node("dataset", md5, f"data: {name} hash {md5}{f' ({rel})' if rel else ''}", details=["from tag dvc.md5." + name],
                        attrs={"name": name, "md5": md5, "path": rel})
            self.attach_stages(node, lock, md5=md5, path=rel)
            nodes.append(node)
            inputs.append(("opsfabric", rel or name, {"md5": md5}))
        if not nodes:
            return [Node("dataset", "none", "data: none recorded", notes=["the run logged no dataset input and no dvc.md5.* tag"])]
        return nodes

    def attach_stages(self, node: Node, lock: DvcLock | None, *, md5: str | None, path: str | None) -> None:
        if lock is None or lock.missing:
            node.notes.append("dvc.lock not available for this run's commit: no stage matched")
            return
        matches = dvc_matches(lock, md5=md5, path=path)
        if not matches:
            node.notes.append(f"no stage of dvc.lock ({lock.where}) lists these bytes or this path")
        # Full nodes for the stages that record these bytes or path, or produce the folder holding them;
        # stages that merely read the whole folder are listed on one line.
        strong = [m for m in matches if not m.how.startswith("inside folder") or m.role == "out"]
        folder_readers = sorted({m.stage.name for m in matches if m not in strong})
        if folder_readers:
            folder = next(m.path for m in matches if m.stage.name == folder_readers[0])
            node.details.append(f"the folder {folder} is also a dep of stages {', '.join(folder_readers)}")
            node.attrs["folder_dep_of"] = folder_readers
        grouped: dict[str, list[StageMatch]] = {}
        for m in strong:
            grouped.setdefault(m.stage.name, []).append(m)
        where = lock.where if not lock.where.startswith("commit ") else "commit " + lock.where.removeprefix("commit ")[:12]
        for name, ms in grouped.items():
            stage = ms[0].stage
            params = _flat_params(stage.params)
            node.children.append(Node(
                "dvc_stage", name,
                f"dvc.lock ({where}) stage {name}: " + "; ".join(f"{m.role} {m.path}, {m.how}" for m in ms),
                details=[f"cmd: {stage.cmd}",
                         "deps: " + ", ".join(f.path for f in stage.deps if not f.path.startswith("opsfabric/")) + _code_deps(stage),
                         "outs: " + (", ".join(f"{f.path} ({_short(f.md5, 12)})" for f in stage.outs) or "none"),
                         "params: " + (", ".join(params[:8]) + (f" (+{len(params) - 8} more)" if len(params) > 8 else "") or "none")],
                attrs={"stage": name, "lock": lock.where, "matches": [{"role": m.role, "path": m.path, "md5": m.recorded_md5, "how": m.how} for m in ms],
                       **stage.to_dict()},
            ))

    def used_nodes(self, run: RunRecord) -> list[Node]:
        """What else a run read: the model a monitoring run scored with, the index an eval run judged."""
        assert self.result is not None
        inputs = self.result.inputs.setdefault(run.run_id, [])
        nodes = []
        if version := run.tags.get("opsfabric.champion_version"):
            found = self.source.version(self.model_name, version)
            if found is not None:
                nodes.append(self.model_node(found, walk=False))
                inputs.append(("mlflow-registry", f"{self.model_name}/{version}", {}))
        if index_run_id := run.tags.get("rag.index_run_id"):
            index_run = self.source.run(index_run_id)
            if index_run is not None:
                nodes.append(self.run_node(index_run, root=False))
            inputs.append(("qdrant", run.tags.get("rag.collection", index_run_id), {}))
        return nodes

    def produced(self, run: RunRecord) -> list[Node]:
        """Model versions registered from the run, the index version it built; recorded for OpenLineage."""
        assert self.result is not None
        outputs = self.result.outputs.setdefault(run.run_id, [])
        nodes = []
        for version in self.source.versions_of_run(run.run_id):
            outputs.append(("mlflow-registry", f"{version.name}/{version.version}"))
            nodes.append(self.model_node(version, walk=False))
        if run.experiment.endswith("-rag-index") and (collection := run.tags.get("rag.collection")):
            outputs.append(("qdrant", collection))
            registry = self.source.index_registry()
            found = registry.find(collection)
            if found is not None:
                nodes.append(self.index_node(found, walk=False, live=registry.live.collection if registry.live else None))
        return nodes

    def flow_run_node(self, run: RunRecord) -> Node:
        flow_run_id = run.flow_run_id
        if not flow_run_id:
            source = run.tags.get("opsfabric.source")
            why = "made by a DVC stage" if source == "dvc" else "made outside a Prefect flow run (a DVC stage or a script)"
            return Node("prefect_flow_run", "none", f"orchestration: no Prefect flow run ({why})",
                        notes=["no prefect.flow_run_id tag on the run"])
        recorded = run.tags.get("prefect.flow_run_url")
        url = self.source.links.flow_run_url(flow_run_id, recorded)
        name = run.tags.get("prefect.flow_run_name")
        flow = run.tags.get("prefect.flow_name")
        node = Node(
            "prefect_flow_run", flow_run_id,
            f"orchestration: Prefect flow run {flow_run_id}" + (f" '{name}' of flow {flow}" if name else ""),
            details=[f"Prefect UI {url}"] if url else [],
            attrs={"flow_run_id": flow_run_id, "flow_run_name": name, "flow_name": flow, "url": url},
        )
        details, note = self.source.flow_run(flow_run_id)
        if details:
            node.attrs["prefect"] = details
            node.details.append(f"state {details.get('state')}, flow {details.get('flow_name')}, started {details.get('start_time')}")
            if details.get("parent_flow_run_id"):
                node.details.append(f"subflow of flow run {details['parent_flow_run_id']}")
        if note:
            node.notes.append(note)
        deployment_id = run.deployment_id or (details or {}).get("deployment_id")
        if deployment_id:
            label = (details or {}).get("deployment_name") or deployment_id
            node.children.append(Node("prefect_deployment", deployment_id, f"deployment {label}", attrs={"deployment_id": deployment_id, **({"name": label} if label != deployment_id else {})}))
        elif "prefect.flow_run_name" in run.tags:
            node.notes.append("not started by a deployment (no prefect.deployment_id tag)")
        else:
            node.notes.append("deployment unknown: the run predates the prefect.deployment_id tag")
        return node


def _code_deps(stage: DvcStage) -> str:
    code = [f for f in stage.deps if f.path.startswith("opsfabric/")]
    return f"{' + ' if len(code) < len(stage.deps) else ''}{len(code)} opsfabric modules" if code else ""


def _flat_params(params: dict[str, Any]) -> list[str]:
    """``file: key=value`` lines of a stage's params (nested mappings flattened, long values elided)."""
    out = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            text = str(value)
            out.append(f"{prefix}={text if len(text) <= 40 else text[:37] + '...'}")

    for file, values in params.items():
        walk("", values)
    return out


# ---- entry points ---------------------------------------------------------------------------------
def trace_lineage(
    source: Any,
    ref: LineageRef,
    *,
    project_root: Path | None = None,
    model_name: str = "churn-classifier",
    path_hints: dict[str, str] | None = None,
    data_md5: str | None = None,
) -> LineageResult:
    """Walk the lineage of ``ref``: backward for a model, index or run; forward for data.

    Args:
        source: the records (``PlatformRecords`` or ``StaticRecords``).
        project_root: makes dataset sources relative, as ``dvc.lock`` names them.
        model_name: the registered model a monitoring run's ``opsfabric.champion_version`` refers to.
        path_hints: a path per ``dvc.md5.<name>`` tag that has no dataset input (``agent_golden``).
        data_md5: for a ``data:<path>`` reference, the md5 of the file (computed at the edge).

    Raises:
        LineageError: ``ref`` names a model, alias, version, index version or run the stores do not know.
    """
    walker = _Walker(source, project_root=project_root, model_name=model_name, path_hints=path_hints or {})
    if ref.kind == "data":
        return trace_data(walker, ref, data_md5)
    walker.result = LineageResult(ref.raw, "backward", Node("root", ref.raw, ref.raw))
    if ref.kind == "model":
        if ref.selector and ref.selector.startswith("@"):
            version = source.alias(ref.name, ref.selector[1:])
        else:
            version = source.version(ref.name, ref.selector)
        if version is None:
            raise LineageError(f"{ref.raw}: no such registered model version in the MLflow registry",
                               hint="list them with the MLflow UI (Models) or try models:/<name>/<version>")
        root = walker.model_node(version, walk=True)
        run = source.run(version.run_id) if version.run_id else None
        if run is not None:  # what the version's own run also registered is not this version's lineage
            walker.result.outputs.setdefault(run.run_id, []).append(("mlflow-registry", f"{version.name}/{version.version}"))
    elif ref.kind == "index":
        registry = source.index_registry()
        live = registry.live.collection if registry.live else None
        if ref.name == registry.alias:
            if registry.live is None:
                raise LineageError(f"{ref.raw}: alias {registry.alias!r} points at no index version yet",
                                   hint="build one: python -m flows.rag_pipeline")
            version = registry.live
        else:
            version = registry.find(ref.name)
            if version is None:
                known = ", ".join(v.collection for v in registry.versions) or "none"
                raise LineageError(f"{ref.raw}: no index version {ref.name!r} in the registry (known: {known}; alias {registry.alias})",
                                   hint="index:<alias> or index:<collection>, e.g. index:" + registry.alias)
        root = walker.index_node(version, walk=True, live=live)
    else:
        run = source.run(ref.name)
        if run is None:
            hint = "a 32-hex value may be a data md5: use data:<md5>" if _RUN_ID.match(ref.name) else f"use one of: {REF_SYNTAX}"
            raise LineageError(f"{ref.raw}: no MLflow run {ref.name!r} in the tracking store", hint=hint)
        root = walker.run_node(run, root=True)
    walker.result.root = root
    return walker.result


def trace_data(walker: _Walker, ref: LineageRef, data_md5: str | None) -> LineageResult:
    """Forward: the runs that read a file (by md5, or by path: the file itself or anything under a folder) and what they produced."""
    source = walker.source
    value = ref.name
    md5 = value if _HEX.match(value) else data_md5
    path = None if _HEX.match(value) else relative_path(value, walker.project_root)
    walker.result = result = LineageResult(ref.raw, "forward", Node("root", ref.raw, ref.raw))
    root = Node("dataset", md5 or path or value, f"data: {path or '(by hash)'} md5 {md5 or 'unknown'}", attrs={"path": path, "md5": md5})
    lock = source.dvc_lock(None)
    walker.attach_stages(root, lock, md5=md5, path=path)
    readers = [run for run in source.all_runs() if _reads(run, md5, path, walker.project_root)]
    for run in sorted(readers, key=lambda r: r.start_ms or 0):
        result.runs[run.run_id] = run
        url = source.links.run_url(run)
        contexts = sorted({i.context or "?" for i in run.inputs if _input_matches(i, md5, path, walker.project_root)}) or ["tag"]
        node = Node("run", run.run_id, f"read by run {run.run_id} {run.experiment}/{run.name} ({', '.join(contexts)}): {run.status}, {_stamp(run.started)}",
                    details=[f"MLflow {url}"] if url else [],
                    attrs={"run_id": run.run_id, "experiment": run.experiment, "name": run.name, "status": run.status, "url": url,
                           "tags": run.tags, "metrics": run.metrics})
        result.inputs[run.run_id] = [("file", path or md5 or value, {"md5": md5} if md5 else {})]
        node.children += walker.produced(run)
        if "drift.retrain" in run.tags:
            node.details.append(f"drift verdict: retrain={run.tags['drift.retrain']}, drift_share {run.metrics.get('drift_share', float('nan')):.2f}")
        if "pass_rate" in run.metrics:
            node.details.append(f"agent pass rate {run.metrics['pass_rate']:.3f}")
        root.children.append(node)
    if not readers:
        root.notes.append("no MLflow run of this store read these bytes")
    result.root = root
    return result


def _input_matches(item: Any, md5: str | None, path: str | None, project_root: Path | None) -> bool:
    if md5 and item.md5 == md5:
        return True
    rel = relative_path(item.source, project_root)
    return bool(path and rel and (rel == path or Path(rel).is_relative_to(path)))


def _reads(run: RunRecord, md5: str | None, path: str | None, project_root: Path | None) -> bool:
    return any(_input_matches(i, md5, path, project_root) for i in run.inputs) or bool(md5 and md5 in run.data_md5.values())


# ---- output ---------------------------------------------------------------------------------------
def render_tree(node: Node) -> str:
    """The tree as text: one line per node, its details and notes (``!``) indented under it."""
    lines = [node.label]
    _render_body(node, "", lines)
    return "\n".join(lines)


def _render_body(node: Node, prefix: str, lines: list[str]) -> None:
    bar = "│   " if node.children else "    "
    for detail in node.details:
        lines.append(f"{prefix}{bar}  {detail}")
    for note in node.notes:
        lines.append(f"{prefix}{bar}  ! {note}")
    for i, child in enumerate(node.children):
        last = i == len(node.children) - 1
        lines.append(f"{prefix}{'└── ' if last else '├── '}{child.label}")
        _render_body(child, prefix + ("    " if last else "│   "), lines)


def openlineage_events(result: LineageResult) -> list[dict[str, Any]]:
    """One OpenLineage ``RunEvent`` per MLflow run in the lineage (plain dicts; write them as JSON lines).

    The run id is the MLflow run id as a UUID; the job is ``<experiment>/<run name>`` in namespace
    ``opsfabric``; the Prefect flow run, when tagged, is the ``parent`` facet. Datasets are named by
    namespace ``file`` (path), ``mlflow-registry`` (``name/version``), ``qdrant`` (collection).
    """
    events = []
    for run_id, run in sorted(result.runs.items(), key=lambda kv: kv[1].start_ms or 0):
        moment = run.ended or run.started or datetime.now(timezone.utc)
        facets: dict[str, Any] = {}
        if run.flow_run_id:
            facets["parent"] = {
                "_producer": PRODUCER,
                "_schemaURL": PARENT_FACET_SCHEMA,
                "run": {"runId": run.flow_run_id},
                "job": {"namespace": "prefect", "name": run.tags.get("prefect.flow_name") or "flow-run"},
            }
        events.append({
            "eventType": OL_EVENT_TYPE.get(run.status, "OTHER"),
            "eventTime": moment.astimezone(timezone.utc).isoformat(),
            "producer": PRODUCER,
            "schemaURL": RUN_EVENT_SCHEMA,
            "run": {"runId": str(uuid.UUID(hex=run_id)) if _RUN_ID.match(run_id) else str(uuid.uuid5(uuid.NAMESPACE_URL, run_id)), "facets": facets},
            "job": {"namespace": "opsfabric", "name": f"{run.experiment}/{run.name}"},
            "inputs": _unique_inputs(result.inputs.get(run_id, [])),
            "outputs": [_dataset(ns, name, {}) for ns, name in dict.fromkeys(result.outputs.get(run_id, []))],
        })
    return events


def _unique_inputs(items: list[tuple[str, str, dict]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict] = {}
    for ns, name, extra in items:
        seen.setdefault((ns, name), extra)
    return [_dataset(ns, name, extra) for (ns, name), extra in seen.items()]


def _dataset(namespace: str, name: str, extra: dict[str, Any]) -> dict[str, Any]:
    dataset: dict[str, Any] = {"namespace": namespace, "name": name}
    if extra.get("md5"):
        dataset["facets"] = {"dvc": {"_producer": PRODUCER, "_schemaURL": PRODUCER + "#DvcFacet", "md5": extra["md5"]}}
    return dataset
