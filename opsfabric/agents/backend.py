"""PlatformBackend: the agent's tools on the live platform (MLflow registry, drift reports, RAG index).

Thin on purpose: each method is one or two calls into the project's ML/RAG functions, so a
module moved by a refactor is a one-line import fix here. The project functions used (as of the
day this was written; the lead re-checks after the ml/rag refactor):

* docs: ``opsfabric.rag.operations.answer_question`` (live alias, citations)
* index: ``opsfabric.rag.operations.index_status``, ``opsfabric.rag.operations.rollback_index``
* registry: ``opsfabric.tracking.mlflow_client``, ``opsfabric.ml.registry.get_champion`` /
  ``model_versions``; promotion moves the alias under ``opsfabric.locking.exclusive`` with the
  registry's lock name ``opsfabric.ml.registry.registry_lock``
* drift: the JSON verdicts that ``opsfabric.ml.monitoring.monitor_batch`` writes (DVC:
  ``reports/drift/<batch>.json``, ``opsfabric.ml.stages.DRIFT_DIR``; flows: ``<state_dir>/runs/monitor/*/<batch>.json``),
  ``decision`` being ``opsfabric.ml.gate.Decision.to_dict()`` (``approved``, ``reasons``)
* retraining: the ``retrain`` flow (``flows.retrain``), started as a subprocess so the agent's
  process does not import the training stack

Not exercised by the offline regression suite (which replays a fixture, see
``opsfabric.agents.replay``); its tests need a trained registry and a built index.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from opsfabric.agents.errors import BackendError
from opsfabric.settings import Settings


class PlatformBackend:
    """The live implementation of :class:`opsfabric.agents.tools.OpsBackend`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # ---- RAG ------------------------------------------------------------------------------------
    def _rag(self) -> Any:
        from opsfabric.rag.settings import RagConfig

        return RagConfig(self.settings)

    def search_docs(self, query: str, top_k: int = 3) -> dict[str, Any]:
        from opsfabric.rag.operations import answer_question

        answer = answer_question(self._rag(), query).to_dict()
        hits = [{"source": c.get("source") or c.get("doc_id"), "text": c.get("text", ""), "score": c.get("score")}
                for c in answer.get("citations", [])[:top_k]]
        return {"query": query, "hits": hits, "answer": answer.get("answer")}

    def index_status(self) -> dict[str, Any]:
        from opsfabric.rag.operations import index_status

        status = index_status(self._rag())
        return {**status, "summary": f"{status['alias']} points to {status['live']}"}

    def rollback_index_alias(self, to_version: str | None, reason: str) -> dict[str, Any]:
        from opsfabric.rag.operations import rollback_index

        return {**rollback_index(self._rag(), to_version), "reason": reason}

    # ---- ML registry ------------------------------------------------------------------------------
    def _client(self) -> Any:
        from opsfabric.tracking import mlflow_client

        return mlflow_client(self.settings)

    def champion_info(self) -> dict[str, Any]:
        from opsfabric.ml.registry import get_champion, model_versions

        name, alias = self.settings.ml.registered_model, self.settings.ml.champion_alias
        client = self._client()
        champion = get_champion(client, name, alias)
        if champion is None:
            raise BackendError(f"model {name} has no {alias} alias yet", hint="run `make run` first")
        scores = client.get_run(champion.run_id).data.metrics if champion.run_id else {}
        return {"model": name, "champion_version": int(champion.version), "scores": scores,
                "versions": [int(v.version) for v in model_versions(client, name)],
                "summary": f"champion is version {champion.version}"}

    def compare_model_versions(self, version_a: int, version_b: int) -> dict[str, Any]:
        client = self._client()
        name = self.settings.ml.registered_model
        out = {}
        for key, v in (("version_a", version_a), ("version_b", version_b)):
            mv = client.get_model_version(name, str(v))
            out[key] = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        delta = {m: round(out["version_b"][m] - out["version_a"][m], 4) for m in out["version_a"] if m in out["version_b"]}
        return {**out, "delta_b_minus_a": delta, "summary": f"metric deltas (b - a): {delta}"}

    def promote_model_version(self, version: int, reason: str) -> dict[str, Any]:
        from opsfabric.locking import exclusive
        from opsfabric.ml.registry import get_champion, registry_lock

        name, alias = self.settings.ml.registered_model, self.settings.ml.champion_alias
        with exclusive(self.settings, registry_lock(name), purpose=f"promote {name} version {version} (ops agent)"):
            client = self._client()
            previous = get_champion(client, name, alias)
            client.get_model_version(name, str(version))  # raises if it does not exist
            client.set_registered_model_alias(name, alias, str(version))
            client.set_model_version_tag(name, str(version), "opsfabric.promoted_by", f"ops-agent: {reason}")
        return {"previous": int(previous.version) if previous else None, "champion_version": version,
                "summary": f"{alias} moved to version {version}"}

    # ---- drift and retraining ---------------------------------------------------------------------
    def latest_drift_verdict(self, batch: str | None = None) -> dict[str, Any]:
        from opsfabric.ml.stages import DRIFT_DIR

        # the DVC stage writes reports/drift/<batch>.json; the monitor flow writes <state_dir>/runs/monitor/<run>/<batch>.json
        candidates = [*self.settings.path(DRIFT_DIR).glob("batch_*.json"),
                      *(self.settings.state_dir / "runs" / "monitor").glob("*/batch_*.json")]
        files = [f for f in candidates if not batch or f.stem == batch]
        if not files:
            raise BackendError(f"no drift verdict for {batch or 'any batch'}", hint="run the monitor flow first")
        newest = max(files, key=lambda f: (f.stem, f.stat().st_mtime)) if not batch else max(files, key=lambda f: f.stat().st_mtime)
        decision = json.loads(newest.read_text()).get("decision", {})
        retrain = bool(decision.get("approved"))  # opsfabric.ml.gate.Decision: approved = retraining recommended
        return {"batch": newest.stem, "decision": decision, "should_retrain": retrain, "source": str(newest),
                "summary": f"{newest.stem}: retraining {'recommended' if retrain else 'not needed'} ({'; '.join(decision.get('reasons', []))})"}

    def trigger_retraining(self, batch: str, reason: str) -> dict[str, Any]:
        log = self.settings.state_dir / "agents" / f"retrain-{batch}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "flows.retrain", batch], cwd=str(self.settings.project_root),
                                    stdout=out, stderr=subprocess.STDOUT)
        return {"started": True, "batch": batch, "pid": proc.pid, "log": str(Path(log)), "reason": reason,
                "summary": f"retraining started on {batch} (pid {proc.pid}, log {log})"}
