"""ReplayBackend: an :class:`~opsfabric.agents.tools.OpsBackend` that replays a recorded platform snapshot.

A replay fixture for the regression suite, not the platform: the live implementation is
``opsfabric.agents.backend.PlatformBackend``. It exists because the live tools need a trained
registry, drift reports and a built index (minutes of work), while the golden suite must run
offline in seconds and give identical verdicts run after run. Risky actions change the in-memory
snapshot and append one line per executed side effect to ``journal`` (a JSON-lines file), so
tests can count side effects across processes.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

from opsfabric.agents.errors import BackendError

DEFAULT_FIXTURE = Path(__file__).resolve().parents[2] / "data/golden/agent/fixtures/platform.json"


class ReplayBackend:
    """Replays ``fixture``; ``faults`` maps a tool name to an error it raises (for failure scenarios)."""

    def __init__(self, fixture: Path | dict[str, Any] = DEFAULT_FIXTURE, *, journal: Path | None = None,
                 faults: dict[str, str] | None = None) -> None:
        data = json.loads(Path(fixture).read_text()) if isinstance(fixture, (str, Path)) else fixture
        self.state = copy.deepcopy(data)
        self.journal = journal
        self.faults = dict(faults or {})

    def _fault(self, tool: str) -> None:
        """Replay the recorded latency of ``tool`` (fixture key ``latency_seconds``), then its fault if any."""
        delay = self.state.get("latency_seconds", {}).get(tool)
        if delay:
            time.sleep(float(delay))
        if tool in self.faults:
            raise BackendError(f"{tool}: {self.faults[tool]}")

    def _record(self, action: str, **details: Any) -> None:
        if self.journal is not None:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            with self.journal.open("a") as fh:
                fh.write(json.dumps({"action": action, **details}, sort_keys=True) + "\n")

    # ---- read-only ------------------------------------------------------------------------------
    def search_docs(self, query: str, top_k: int = 3) -> dict[str, Any]:
        self._fault("search_docs")
        words = set(re.findall(r"[a-z0-9]+", query.lower())) - {"the", "a", "an", "of", "to", "for", "is", "how", "do", "i", "what", "when", "was"}
        scored = []
        for doc in self.state["docs"]:
            overlap = len(words & set(re.findall(r"[a-z0-9]+", (doc["text"] + " " + doc["source"]).lower())))
            if overlap:
                scored.append((overlap, doc["source"], doc))
        scored.sort(key=lambda x: (-x[0], x[1]))
        hits = [{"source": d["source"], "text": d["text"], "score": s} for s, _, d in scored[:top_k]]
        return {"query": query, "hits": hits, "index": self.state["index"]["live"]}

    def champion_info(self) -> dict[str, Any]:
        self._fault("champion_info")
        model = self.state["model"]
        v = str(model["champion_version"])
        return {"model": model["name"], "champion_version": int(v), "scores": model["versions"][v],
                "versions": sorted(int(k) for k in model["versions"]),
                "summary": f"champion is version {v} (ROC-AUC {model['versions'][v]['roc_auc']})"}

    def compare_model_versions(self, version_a: int, version_b: int) -> dict[str, Any]:
        self._fault("compare_model_versions")
        versions = self.state["model"]["versions"]
        for v in (version_a, version_b):
            if str(v) not in versions:
                raise BackendError(f"model version {v} is not registered (versions: {', '.join(sorted(versions))})")
        a, b = versions[str(version_a)], versions[str(version_b)]
        delta = {m: round(b[m] - a[m], 4) for m in ("roc_auc", "f1", "accuracy")}
        better = version_b if delta["roc_auc"] > 0 else version_a
        return {"version_a": a, "version_b": b, "delta_b_minus_a": delta,
                "summary": f"version {better} has the higher ROC-AUC (delta {delta['roc_auc']:+.3f})"}

    def latest_drift_verdict(self, batch: str | None = None) -> dict[str, Any]:
        self._fault("latest_drift_verdict")
        batch = batch or self.state["latest_batch"]
        if batch not in self.state["drift"]:
            raise BackendError(f"no drift verdict for {batch} (batches: {', '.join(sorted(self.state['drift']))})")
        verdict = self.state["drift"][batch]
        return {"batch": batch, **verdict, "should_retrain": verdict["drift_detected"],
                "summary": f"{batch}: {verdict['summary']}; retraining {'recommended' if verdict['drift_detected'] else 'not needed'}"}

    def index_status(self) -> dict[str, Any]:
        self._fault("index_status")
        idx = self.state["index"]
        return {**idx, "summary": f"{idx['alias']} points to {idx['live']}; versions {', '.join(sorted(idx['versions']))}"}

    # ---- risky (side effects only here, after approval) -------------------------------------------
    def trigger_retraining(self, batch: str, reason: str) -> dict[str, Any]:
        self._fault("trigger_retraining")
        if batch not in self.state["drift"]:
            raise BackendError(f"cannot retrain on {batch}: no such batch")
        self._record("trigger_retraining", batch=batch, reason=reason)
        return {"started": True, "batch": batch, "summary": f"retraining started on {batch}"}

    def rollback_index_alias(self, to_version: str | None, reason: str) -> dict[str, Any]:
        self._fault("rollback_index_alias")
        idx = self.state["index"]
        candidates = sorted(v for v in idx["versions"] if v < idx["live"] and idx["versions"][v]["status"] != "retired")
        target = to_version or (candidates[-1] if candidates else None)
        if target is None or target not in idx["versions"]:
            raise BackendError(f"cannot roll back to {target}: not a kept index version")
        previous, idx["live"] = idx["live"], target
        self._record("rollback_index_alias", previous=previous, live=target, reason=reason)
        return {"previous": previous, "live": target, "summary": f"{idx['alias']} moved from {previous} to {target}"}

    def promote_model_version(self, version: int, reason: str) -> dict[str, Any]:
        self._fault("promote_model_version")
        model = self.state["model"]
        if str(version) not in model["versions"]:
            raise BackendError(f"model version {version} is not registered")
        previous, model["champion_version"] = model["champion_version"], version
        self._record("promote_model_version", previous=previous, champion=version, reason=reason)
        return {"previous": previous, "champion_version": version, "summary": f"champion moved from version {previous} to {version}"}
