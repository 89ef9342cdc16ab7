"""PlatformBackend: the agent's tools on the live platform (MLflow registry, drift reports, RAG index).

Thin on purpose: each method is one or two calls into the project's ML/RAG functions.

* docs: ``opsfabric.rag.operations.answer_question`` (live alias, citations); each hit is a
  citation with the answer sentences that cite it (instruction-like text never reaches an answer)
* index: ``opsfabric.rag.operations.index_status``; ``opsfabric.rag.operations.rollback_index``
  (under the index lock, refuses unfinished or unsearchable targets)
* registry: ``opsfabric.ml.registry.get_champion`` / ``model_versions``. There is no manual
  promotion in ``opsfabric.ml.promotion`` (the gate only promotes candidates it judged), so
  :meth:`PlatformBackend.promote_model_version` follows the gate's discipline itself: under the
  registry lock (``registry_lock``) it reconciles what a killed gate left
  (``promotion.reconcile_registry``), re-reads the alias, refuses a version that does not exist or
  never went through the gate, moves the alias and tags the version with who and why
* drift: the JSON verdicts that ``opsfabric.ml.monitoring.monitor_batch`` writes (DVC:
  ``reports/drift/<batch>.json``; flows: ``<state_dir>/runs/monitor/*/<batch>.json``),
  ``decision`` being ``opsfabric.ml.gate.Decision.to_dict()`` (``approved``, ``reasons``)
* retraining: ``python -m flows.retrain --config <this configuration> BATCH`` in a child process
  (the agent's process does not import the training stack), run with the agent's whole
  configuration (written to a YAML overlay), so it trains on the same dataset into the same
  registry and state folder; a failure is a :class:`BackendError` carrying the child's named error

Every failure a caller can act on is a :class:`BackendError` (an MLflow "not found" included), so
the agent records it as a tool error instead of crashing the run.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from opsfabric.agents.errors import BackendError, OutcomeUnknownError
from opsfabric.settings import Settings

# Tags a manual promotion writes on the version it makes champion (the gate's own tags stay as they are).
PROMOTED_BY_TAG = "manual.promoted_by"
PROMOTION_REASON_TAG = "manual.reason"
PREVIOUS_CHAMPION_TAG = "manual.previous_champion"
PROMOTED_AT_TAG = "manual.promoted_at"
TAG_LIMIT = 4900  # MLflow tag values are limited to 5000 characters


class PlatformBackend:
    """The live implementation of :class:`opsfabric.agents.tools.OpsBackend`.

    Args:
        settings: the configuration the agent runs with; every tool (and the retraining child
            process) uses this one.
        embed_model: the embedding used to answer documentation questions; None: the configured
            one, built on first use and kept (loading MiniLM takes seconds).
    """

    def __init__(self, settings: Settings, *, embed_model: Any | None = None) -> None:
        self.settings = settings
        self._embed_model = embed_model

    # ---- RAG ------------------------------------------------------------------------------------
    def _rag(self) -> Any:
        from opsfabric.rag.settings import RagConfig

        return RagConfig(self.settings)

    def _embedding(self) -> Any:
        if self._embed_model is None:
            from opsfabric.rag.embeddings import configured_embedding

            self._embed_model = configured_embedding(self._rag())
        return self._embed_model

    def search_docs(self, query: str, top_k: int = 3) -> dict[str, Any]:
        from opsfabric.rag.operations import answer_question

        answer = answer_question(self._rag(), query, self._embedding())
        passages = cited_passages(answer.text, answer.citations, len(answer.contexts))
        hits = [{"source": c["source_path"], "title": c.get("title", ""), "chunk_index": c["chunk_index"], "chunk_id": c["chunk_id"],
                 "text": text} for c, text in zip(answer.citations, passages)][:top_k]
        flagged = sorted({c["source_path"] for c in answer.flagged_chunks})
        summary = f"{len(hits)} cited passage(s) from {', '.join(dict.fromkeys(h['source'] for h in hits)) or 'no document'}"
        if flagged:
            summary += f"; instruction-like text in {', '.join(flagged)} was not used"
        return {"query": query, "hits": hits, "answer": answer.text, "method": answer.method,
                "flagged_sources": flagged, "summary": summary}

    def index_status(self) -> dict[str, Any]:
        from opsfabric.rag.operations import index_status

        status = index_status(self._rag())
        kept = [f"{v['collection']} ({v['status']})" for v in status["versions"] if v["status"] != "retired"]
        return {**status, "summary": f"{status['alias']} points to {status['live'] or 'nothing'}; versions {', '.join(kept) or 'none'}"}

    def rollback_index_alias(self, to_version: str | None, reason: str) -> dict[str, Any]:
        from opsfabric.rag.operations import rollback_index

        moved = rollback_index(self._rag(), to_version)  # takes the index lock; IndexVersionError names a bad target
        return {"alias": moved["alias"], "previous": moved["from"], "live": moved["to"], "reason": reason,
                "summary": f"{moved['alias']} moved from {moved['from']} to {moved['to']}"}

    # ---- ML registry ------------------------------------------------------------------------------
    def _client(self) -> Any:
        from opsfabric.tracking import mlflow_client

        return mlflow_client(self.settings)

    def _version(self, client: Any, version: int) -> Any:
        """The registered version as a ``ModelRef``, or a BackendError naming the versions that exist."""
        from opsfabric.ml.registry import model_versions

        name = self.settings.ml.registered_model
        found = {int(v.version): v for v in model_versions(client, name)}
        if version not in found:
            listed = ", ".join(str(v) for v in sorted(found)) or "none"
            raise BackendError(f"model {name} has no version {version} (versions: {listed})",
                               hint="ask for the champion to see the registered versions")
        return found[version]

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
        out = {}
        for key, v in (("version_a", version_a), ("version_b", version_b)):
            ref = self._version(client, v)
            out[key] = client.get_run(ref.run_id).data.metrics if ref.run_id else {}
        delta = {m: round(out["version_b"][m] - out["version_a"][m], 4) for m in out["version_a"] if m in out["version_b"]}
        return {**out, "delta_b_minus_a": delta, "summary": f"metric deltas (b - a): {delta}"}

    def promote_model_version(self, version: int, reason: str) -> dict[str, Any]:
        """Make ``version`` champion, under the registry lock every registry writer takes.

        Raises:
            BackendError: the version does not exist, or was not registered by the gate (no
                ``gate.decision`` tag, no training run): only trained and judged versions may serve.
            LockTimeoutError: another process held the registry lock too long.
        """
        from opsfabric.locking import exclusive
        from opsfabric.ml.promotion import reconcile_registry
        from opsfabric.ml.registry import DECISION_TAG, PROMOTING, get_champion, registry_lock

        name, alias = self.settings.ml.registered_model, self.settings.ml.champion_alias
        client = self._client()
        with exclusive(self.settings, registry_lock(name), purpose=f"promote {name} version {version} (ops agent)"):
            # a gate killed mid-way left a version 'promoting': repair it first, or moving the alias
            # now would make the next reconcile misread who moved it
            repairs = reconcile_registry(client, name, alias)
            target = self._version(client, version)
            if not target.run_id or target.decision is None or target.decision == PROMOTING:
                raise BackendError(
                    f"model {name} version {version} was not registered by the promotion gate "
                    f"({DECISION_TAG}={target.decision!r}, run {target.run_id or 'none'}): it cannot be promoted by hand",
                    hint="register models through the train or retrain flow",
                )
            current = get_champion(client, name, alias)  # re-read under the lock: what we replace is what is there now
            previous = int(current.version) if current else None
            if previous == version:
                return {"previous": previous, "champion_version": version, "changed": False, "repairs": repairs,
                        "summary": f"version {version} already is {alias}; nothing changed"}
            who = f"ops-agent, approved by {approving_user()}"
            client.set_registered_model_alias(name, alias, str(version))
            for key, value in ((PROMOTED_BY_TAG, who), (PROMOTION_REASON_TAG, reason[:TAG_LIMIT]),
                               (PREVIOUS_CHAMPION_TAG, str(previous) if previous else "none"),
                               (PROMOTED_AT_TAG, datetime.now(timezone.utc).isoformat(timespec="seconds"))):
                client.set_model_version_tag(name, str(version), key, value)
        return {"previous": previous, "champion_version": version, "changed": True, "gate_decision": target.decision,
                "repairs": repairs, "summary": f"{alias} moved from version {previous} to {version}"}

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
        """Run the retrain flow on ``batch`` in a child process with this configuration.

        Waits up to ``agents.retrain_wait_seconds`` for its outcome (the gate's decision); a run
        still going after that keeps running and is reported with its log.

        Raises:
            BackendError: ``batch`` is not a configured batch (nothing is started), or the retrain
                run failed (the message carries its named error and exit status, the hint its log).
        """
        by_name = {self.settings.path(p).stem for p in self.settings.dataset.batches}
        if batch not in by_name:
            raise BackendError(f"cannot retrain on {batch}: dataset {self.settings.dataset.name!r} has no such batch "
                               f"(batches: {', '.join(sorted(by_name)) or 'none'})")
        folder = self.settings.state_dir / "agents" / "retrain"
        folder.mkdir(parents=True, exist_ok=True)
        base = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{batch}"
        overlay = write_config_overlay(self.settings, folder / f"{base}.config.yaml",
                                       note=f"retrain on {batch} requested through the ops agent: {reason}")
        log, result = folder / f"{base}.log", folder / f"{base}.stdout"
        with log.open("wb") as err, result.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "flows.retrain", "--config", str(overlay), batch],
                                    cwd=str(self.settings.project_root), env=child_env(self.settings), stdout=out, stderr=err)
        try:
            status = proc.wait(timeout=self.settings.agents.retrain_wait_seconds)
        except subprocess.TimeoutExpired:
            return {"started": True, "finished": False, "batch": batch, "pid": proc.pid, "log": str(log), "reason": reason,
                    "summary": f"retraining on {batch} is still running after {self.settings.agents.retrain_wait_seconds:g} s "
                               f"(pid {proc.pid}); its outcome goes to {log}, the Prefect flow run 'retrain' and MLflow"}
        if status != 0:
            raise OutcomeUnknownError(f"retraining on {batch} failed (exit status {status}): {named_error(log)}", hint=f"full log: {log}")
        outcome = parse_flow_output(result.read_text())
        word = "promoted" if outcome.get("promoted") else "not promoted"
        return {"started": True, "finished": True, "batch": batch, "reason": reason, "log": str(log), "run_id": outcome.get("run_id"),
                "version": outcome.get("version"), "promoted": bool(outcome.get("promoted")),
                "previous_champion": outcome.get("previous_champion"), "reasons": outcome.get("reasons", []),
                "summary": f"retraining on {batch} finished: version {outcome.get('version')} {word} "
                           f"({'; '.join(outcome.get('reasons', []))})"}


def approving_user() -> str:
    """Who approved: ``user@host`` of the process for ``python -m flows.agent approve``; inside a Prefect flow run
    (the UI's resume form) the flow run id, since open-source Prefect does not record who submitted a form."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no USER variable (some containers)
        user = f"uid {os.getuid()}"
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if run_id:
        return f"the Prefect resume form of flow run {run_id} (submitter not recorded; flow process {user}@{socket.gethostname()})"
    return f"{user}@{socket.gethostname()}"


# ---- helpers of the retraining child ----------------------------------------------------------------
def write_config_overlay(settings: Settings, path: Path, *, note: str) -> Path:
    """The whole configuration as a YAML overlay: loading it over the base files gives ``settings`` back."""
    import yaml

    body = yaml.safe_dump(settings.model_dump(mode="json", exclude={"project_root"}), sort_keys=True)
    path.write_text(f"# written by opsfabric.agents.backend: {note.splitlines()[0][:200] if note else ''}\n{body}")
    return path


def child_env(settings: Settings) -> dict[str, str]:
    """The child's environment: ours without the variables that would override the overlay.

    ``OPSFABRIC_<SECTION>__...`` and ``OPSFABRIC_CONFIG`` already shaped ``settings`` (or were
    overridden by the caller); the overlay carries the result, so they must not apply twice.
    ``OPSFABRIC_STATE_DIR`` is set to the agent's state folder (Prefect's home follows it).
    """
    sections = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("OPSFABRIC_") and (k == "OPSFABRIC_CONFIG" or k[len("OPSFABRIC_"):].split("__")[0] in sections))}
    env["OPSFABRIC_STATE_DIR"] = str(settings.state_dir)
    return env


def named_error(log: Path, tail: int = 5) -> str:
    """The ``error:`` / ``hint:`` lines a command prints for a named error, else the log's last lines."""
    lines = log.read_text(errors="replace").splitlines()
    named = [line.strip() for line in lines if line.startswith(("error: ", "hint: "))]
    return " ".join(named) if named else " | ".join(line.strip() for line in lines[-tail:] if line.strip()) or "no output"


def parse_flow_output(text: str) -> dict[str, Any]:
    """The JSON summary a ``python -m flows.<name>`` command prints last on stdout (``json.dumps(..., indent=2)``)."""
    lines = text.splitlines()
    for start in reversed([i for i, line in enumerate(lines) if line == "{"]):
        try:
            value = json.loads("\n".join(lines[start:]))
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise OutcomeUnknownError(f"the retrain run exited 0 but printed no JSON summary (stdout ends: {text[-300:]!r})")


def cited_passages(answer_text: str, citations: list[dict[str, Any]], n_contexts: int) -> list[str]:
    """For each citation, the answer sentences that cite it (``... [n]``).

    Both answerers number citations the same way: the i-th citation is the i-th smallest marker
    in the text (the extractive answerer numbers 1..k, an LLM uses context positions).
    """
    markers = sorted({int(n) for n in re.findall(r"\[(\d+)\]", answer_text) if 1 <= int(n) <= n_contexts})
    if len(markers) != len(citations):
        return ["" for _ in citations]
    sentences: dict[int, list[str]] = {m: [] for m in markers}
    for sentence, refs in re.findall(r"([^\[\]]+?)\s*((?:\[\d+\]\s*)+)", answer_text):
        for n in re.findall(r"\d+", refs):
            if int(n) in sentences:
                sentences[int(n)].append(sentence.strip().lstrip(".;:,) "))
    return [" ".join(sentences[m]) for m in markers]
