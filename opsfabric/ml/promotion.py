"""The promotion gate: judge a candidate against the champion, then apply the decision under the registry lock.

Judging (loading the champion, scoring it on the candidate's eval data) is slow and happens without
the lock. Applying is short and happens under ``locking.exclusive(settings, "ml-registry-<name>")``,
which every registry write of every process takes (monitor, weekly pipeline, a deployment run):

0. ``reconcile_registry``: repair what a gate killed mid-way left behind (below);
1. compare-and-set: re-read the champion; if it is not the version that was scored, the decision is
   stale: judge again against the new champion (at most ``max_attempts`` times), then
   :class:`~opsfabric.ml.errors.StaleChampionError`. The alias never moves on a stale decision;
2. create the registered model if it does not exist;
3. create the version, tagged with lineage, threshold, scores and ``gate.decision`` =
   ``promoting`` (the intent) or ``rejected``;
4. if approved, point the alias at it, then re-read the version's ``gate.decision``: if it is no
   longer ``promoting``, another gate reconciled it as interrupted, so this gate lost the lock
   (below): :class:`~opsfabric.ml.errors.RegistryLockLostError`, the alias move is rolled back;
5. if approved, tag it ``promoted`` (the alias move is confirmed);
6. copy the decision to the candidate's MLflow run (tags, metrics, ``gate/decision.json``);
   ``gate.version`` on the run is written last and marks the copy complete.

A process killed after step 3, 4 or 5 leaves the newest version unfinished, and only the newest:
the next gate reconciles under the same lock before it writes anything. Reconciling turns a
``promoting`` version that is champion into ``promoted`` (killed after 4) and one that is not into
``interrupted`` with a reason (killed after 3: it never was champion, the alias never moved), and
rewrites the run's copy of the decision when it is missing or differs (killed after 3, 4 or 5). A
run killed while RUNNING is marked KILLED by ``tracking.reconcile_abandoned_runs`` when the next run
of its experiment starts.

An exception (not a kill) in steps 2-6 rolls back under the lock: the alias goes back to the
scored champion only if it still points at the new version, then the version is deleted and a
registered model created by this gate is deleted. Each step runs only if the ones before it
succeeded: MLflow deletes the aliases of a deleted version, so deleting the version while the alias
still points at it would leave no champion at all. A roll back that stops early leaves what a gate
killed after step 4 or 5 leaves, which the next gate reconciles, and the error says ``roll back
incomplete`` and names the step.

The lock's two kinds (``opsfabric.locking``) differ in one way that matters here. A file lock is
held until the holder's process ends. The Prefect lock is a lease with no fencing token: a holder
that stalls longer than the lease loses the lock without knowing it, and another gate may take it,
find this gate's version ``promoting`` and reconcile it as interrupted while this gate still writes.
The re-read in step 4 is the guard against that: the gate stops and rolls back its alias move
instead of confirming a version already declared dead. It narrows the window, it cannot close it
(the other gate may move the alias between this gate's move and its roll back); only the registry
itself could fence writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from opsfabric import tracking
from opsfabric.locking import exclusive
from opsfabric.ml.champion import load_version
from opsfabric.ml.dataset import FeatureSpec
from opsfabric.ml.errors import EvaluationMismatchError, RegistrationError, RegistryLockLostError, StaleChampionError
from opsfabric.ml.gate import GateDecision, should_promote
from opsfabric.ml.model import evaluate_model
from opsfabric.ml.registry import (
    DECISION_TAG,
    INTERRUPTED,
    PROMOTED,
    PROMOTING,
    REJECTED,
    THRESHOLD_TAG,
    ModelRef,
    get_champion,
    is_not_found,
    model_versions,
    registry_lock,
)
from opsfabric.ml.training import CandidateRun, evaluation_digest
from opsfabric.settings import Settings
from opsfabric.tracking import Lineage

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # judgements per gate when the champion keeps changing under it
RUN_VERSION_TAG = "gate.version"  # on the candidate's run: written last, marks the run's copy complete
RUN_MODEL_TAG = "gate.registered_model"  # on the candidate's run: the registered model the version belongs to
REASON_LIMIT = 4900  # MLflow tag values are limited to 5000 characters


@dataclass(frozen=True)
class Judgement:
    """The gate's decision for a candidate against the champion version it scored."""

    champion_version: str | None
    decision: GateDecision


@dataclass
class GateOutcome:
    """What the gate did: the decision, the version registered, and what it had to repair first."""

    decision: GateDecision
    version: str
    champion_version: str | None
    attempts: int
    repairs: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.decision.approved

    def summary(self) -> dict[str, Any]:
        return {
            "promoted": self.decision.approved,
            "reasons": self.decision.reasons,
            "metric": self.decision.metric,
            "candidate_score": self.decision.candidate_score,
            "champion_score": self.decision.champion_score,
            "version": self.version,
            "previous_champion": self.champion_version,
            "attempts": self.attempts,
            "repairs": self.repairs,
        }


def judge_candidate(settings: Settings, candidate: CandidateRun, evaluation: pd.DataFrame, spec: FeatureSpec) -> Judgement:
    """Score the current champion on the candidate's eval data and decide (no lock, no writes).

    The champion is scored with its own recorded decision threshold, the candidate with its own:
    each model as it would serve.

    Raises:
        EvaluationMismatchError: ``evaluation`` is not the data the candidate's metrics were computed
            on (its content digest differs); a ``ValueError``.
    """
    digest = evaluation_digest(evaluation)
    if digest != candidate.eval_digest:
        raise EvaluationMismatchError(
            f"candidate run {candidate.run_id} was evaluated on {candidate.n_eval} rows with digest {candidate.eval_digest[:12]}, "
            f"the gate got {len(evaluation)} rows with digest {digest[:12]}: the gate must compare both models on the same data",
            hint="pass the gate the evaluation set of the TrainingSets the candidate was trained with",
        )
    metric = settings.ml.gate.metric
    ref = get_champion(tracking.mlflow_client(settings), settings.ml.registered_model, settings.ml.champion_alias)
    champion_score = None
    if ref is not None:
        champion = load_version(settings, ref)
        champion_score = evaluate_model(champion.model, evaluation, spec, threshold=champion.decision_threshold)[metric]
    decision = should_promote(candidate.metrics[metric], champion_score, settings.ml.gate)
    return Judgement(champion_version=ref.version if ref else None, decision=decision)


def gate_and_register(
    settings: Settings,
    candidate: CandidateRun,
    evaluation: pd.DataFrame,
    spec: FeatureSpec,
    *,
    lineage: Lineage,
    max_attempts: int = MAX_ATTEMPTS,
    on_judged: Callable[[Judgement], None] | None = None,
) -> GateOutcome:
    """Judge the candidate, then register it and move the alias if approved, all under the registry lock.

    Args:
        evaluation: the rows the candidate's metrics were computed on; the champion is scored on them.
        spec: feature roles.
        lineage: tagged on the registered version.
        max_attempts: judgements before giving up when the champion keeps changing.
        on_judged: called after each judgement, before the lock is taken (tests line up racing
            processes with it; None in production).

    Raises:
        StaleChampionError: the champion changed after every one of ``max_attempts`` judgements.
        EvaluationMismatchError: ``evaluation`` is not the candidate's eval data; nothing was written.
        RegistrationError: a registry write failed; rolled back (the registry is as before), or, if
            the message says ``roll back incomplete``, left for the next gate to reconcile.
        RegistryLockLostError: another gate reconciled this gate's version while it wrote (the
            lock's lease expired); rolled back as for RegistrationError.
        LockTimeoutError: another process held the registry lock too long.
    """
    name, alias = settings.ml.registered_model, settings.ml.champion_alias
    client = tracking.mlflow_client(settings)
    stale: list[str] = []
    repairs: list[str] = []
    for attempt in range(1, max_attempts + 1):
        judgement = judge_candidate(settings, candidate, evaluation, spec)
        if on_judged is not None:
            on_judged(judgement)
        with exclusive(settings, registry_lock(name), purpose=f"gate MLflow run {candidate.run_id} into {name!r}"):
            repairs += reconcile_registry(client, name, alias)
            current = get_champion(client, name, alias)
            current_version = current.version if current else None
            if current_version != judgement.champion_version:
                stale.append(f"scored champion {judgement.champion_version or 'none'}, found {current_version or 'none'}")
                log.warning("gate for run %s: champion changed while judging (%s); judging again", candidate.run_id, stale[-1])
                continue
            version = _apply(client, settings, candidate, judgement, lineage, attempt)
        log.info("gate for run %s: version %s %s; %s", candidate.run_id, version, _decision_word(judgement.decision), "; ".join(judgement.decision.reasons))
        return GateOutcome(judgement.decision, version, judgement.champion_version, attempt, repairs)
    raise StaleChampionError(
        f"gate for MLflow run {candidate.run_id}: the champion of {name!r} changed after each of {max_attempts} judgements "
        f"({'; '.join(stale)}); nothing was registered",
        hint="another process promotes models in a loop; run the gate again when it is done",
    )


def _decision_word(decision: GateDecision) -> str:
    return PROMOTED if decision.approved else REJECTED


def version_tags(candidate: CandidateRun, judgement: Judgement, lineage: Lineage, attempt: int) -> dict[str, str]:
    """Everything a registered version carries: lineage, score, threshold and the gate's decision."""
    decision = judgement.decision
    return {
        **lineage.as_tags(),
        f"eval_{decision.metric}": f"{decision.candidate_score:.6f}",
        THRESHOLD_TAG: repr(candidate.decision_threshold),
        DECISION_TAG: PROMOTING if decision.approved else REJECTED,
        "gate.metric": decision.metric,
        "gate.candidate_score": f"{decision.candidate_score:.6f}",
        "gate.champion_score": "none" if decision.champion_score is None else f"{decision.champion_score:.6f}",
        "gate.reasons": " | ".join(decision.reasons)[:REASON_LIMIT],
        "gate.previous_champion": judgement.champion_version or "none",
        "gate.attempt": str(attempt),
    }


def _apply(client: Any, settings: Settings, candidate: CandidateRun, judgement: Judgement, lineage: Lineage, attempt: int) -> str:
    """Steps 2-6 of the protocol (the caller holds the lock and has checked the champion)."""
    from mlflow.exceptions import MlflowException

    name, alias = settings.ml.registered_model, settings.ml.champion_alias
    created_model, version, alias_moved = False, None, False
    try:
        try:
            client.create_registered_model(name, description="Registered by OpsFabric; champion marked by alias.")
            created_model = True
        except MlflowException as exc:
            if "ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")):
                raise
        tags = version_tags(candidate, judgement, lineage, attempt)
        model_uri = candidate.model_uri
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        version = str(client.create_model_version(name, source=model_uri, run_id=candidate.run_id, tags=tags, model_id=model_id).version)
        if judgement.decision.approved:
            alias_moved = True  # before the call: a call that fails may still have moved it (restoring checks)
            client.set_registered_model_alias(name, alias, version)
            _check_still_promoting(client, name, version)
            client.set_model_version_tag(name, version, DECISION_TAG, PROMOTED)
            tags[DECISION_TAG] = PROMOTED
        record_on_run(client, candidate.run_id, name, version, tags)
    except Exception as exc:
        failed = _roll_back(client, name, alias, version, judgement.champion_version, created_model, alias_moved, candidate.run_id)
        error = type(exc) if isinstance(exc, RegistrationError) else RegistrationError
        if failed:
            raise error(
                f"registering {name!r} from MLflow run {candidate.run_id} failed: {exc}; roll back incomplete: {'; '.join(failed)}",
                hint=f"the registry is left as a gate killed mid-way leaves it (version {version or 'none'} may still be "
                "promoting or champion); the next gate reconciles it under the registry lock before it writes",
            ) from exc
        raise error(
            f"registering {name!r} from MLflow run {candidate.run_id} failed and was rolled back "
            f"(champion stays {judgement.champion_version or 'unset'}): {exc}"
        ) from exc
    return version


def _check_still_promoting(client: Any, name: str, version: str) -> None:
    """Raise if another gate reconciled ``version`` (no longer ``promoting``): this gate lost the lock."""
    decision = client.get_model_version(name, version).tags.get(DECISION_TAG)
    if decision != PROMOTING:
        raise RegistryLockLostError(
            f"version {version} of {name!r} is {decision!r}, not {PROMOTING!r}, right after this gate moved the alias to it: "
            "another gate took the registry lock (its lease expired under this one) and reconciled the version",
            hint="raise orchestration.lock.lease_seconds above the gate's longest registry write; the gate can be run again",
        )


def record_on_run(client: Any, run_id: str | None, name: str, version: str, tags: dict[str, str]) -> None:
    """Copy a version's gate decision to the candidate's run: ``gate/decision.json``, metrics, then tags.

    Built from the version's tags only, so reconciling rebuilds exactly what the gate would have
    written. ``gate.version`` comes last, in the same call as the other tags: its presence means the
    copy is complete.
    """
    from mlflow.entities import Metric, RunTag

    if not run_id:
        return
    champion_score = tags.get("gate.champion_score", "none")
    record = {
        "decision": tags.get(DECISION_TAG),
        "registered_model": name,
        "version": version,
        "metric": tags.get("gate.metric"),
        "candidate_score": float(tags["gate.candidate_score"]),
        "champion_score": None if champion_score == "none" else float(champion_score),
        "champion_version": tags.get("gate.previous_champion"),
        "reasons": tags.get("gate.reasons", "").split(" | "),
    }
    client.log_dict(run_id, record, "gate/decision.json")
    now = int(time.time() * 1000)
    metrics = [Metric("gate_candidate_score", record["candidate_score"], now, 0)]
    if record["champion_score"] is not None:
        metrics.append(Metric("gate_champion_score", record["champion_score"], now, 0))
    run_tags = [
        RunTag(DECISION_TAG, record["decision"]),
        RunTag("gate.champion_version", record["champion_version"] or "none"),
        RunTag(RUN_MODEL_TAG, name),
    ]
    if "gate.reconciled" in tags:
        run_tags.append(RunTag("gate.reconciled", tags["gate.reconciled"]))
    client.log_batch(run_id, metrics=metrics, tags=[*run_tags, RunTag(RUN_VERSION_TAG, version)])


def _roll_back(
    client: Any,
    name: str,
    alias: str,
    version: str | None,
    champion_version: str | None,
    created_model: bool,
    alias_moved: bool,
    run_id: str,
) -> list[str]:
    """Undo a gate that raised, one step after another; the first step that fails stops the roll back.

    Each step needs the ones before it: MLflow's ``delete_model_version`` also deletes every alias
    on the version, so deleting it while the alias still points at it would delete the champion.
    A roll back that stops leaves at worst what a gate killed after moving the alias leaves (a
    version tagged promoting, the alias on it), and the next gate reconciles it.

    Returns:
        The steps that failed or were skipped, each with why (empty: fully rolled back).
    """

    def restore_alias() -> None:
        current = get_champion(client, name, alias)
        if current is None or current.version != version:
            return  # not where we put it: someone else's move, leave it
        if champion_version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, champion_version)

    steps: list[tuple[str, Callable[[], None]]] = []
    if alias_moved:
        steps.append(("restore alias", restore_alias))
    if version is not None:
        steps.append(("delete version", lambda: client.delete_model_version(name, version)))
    if created_model:
        steps.append(("delete registered model", lambda: client.delete_registered_model(name)))
    if version is not None:
        steps.append(("tag run", lambda: client.set_tag(run_id, DECISION_TAG, "rolled back")))
    for index, (label, step) in enumerate(steps):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the caller raises the original error and names this one
            log.error("roll back of %s version %s: %s failed: %s", name, version, label, exc)
            skipped = [later for later, _ in steps[index + 1 :]]
            if skipped:
                log.error("roll back of %s version %s: skipped %s; the next gate reconciles", name, version, ", ".join(skipped))
            return [f"{label} failed ({type(exc).__name__}: {exc})", *(f"{later} skipped" for later in skipped)]
    return []


def reconcile_registry(client: Any, name: str, alias: str) -> list[str]:
    """Repair what a gate killed between its writes left behind. Call it holding the registry lock.

    Returns:
        One line per repair (empty when the registry was consistent).
    """
    versions = model_versions(client, name)
    if not versions:
        return []
    champion = get_champion(client, name, alias)
    repairs: list[str] = []
    to_record: dict[str, ModelRef] = {}
    for ref in versions:
        if ref.decision != PROMOTING:
            continue
        if champion is not None and champion.version == ref.version:
            note = "the gate moved the alias to this version and died before confirming it; confirmed by a later gate"
            updates = {"gate.reconciled": note, DECISION_TAG: PROMOTED}
        else:
            note = "the gate registered this version to promote it and died before moving the alias; it never was champion"
            updates = {"gate.reconciled": note, DECISION_TAG: INTERRUPTED}
        for key, value in updates.items():  # the decision last: until it changes, a crash here is repaired again
            client.set_model_version_tag(name, ref.version, key, value)
        to_record[ref.version] = ModelRef(ref.name, ref.version, ref.run_id, ref.source, {**ref.tags, **updates})
        repairs.append(f"version {ref.version}: {PROMOTING} -> {updates[DECISION_TAG]} ({note})")
    newest = versions[-1]
    if newest.decision is None:
        # registered outside the gate (by hand, or by another tool): there is no decision to copy
        pass
    elif newest.version not in to_record and newest.run_id:
        run_tags = _live_run_tags(client, newest.run_id)
        if run_tags is None:
            repairs.append(_run_gone(newest))
        elif not _has_record(run_tags, newest):
            to_record[newest.version] = newest
            repairs.append(f"version {newest.version}: decision {newest.decision!r} copied to its run {newest.run_id}")
    for ref in to_record.values():
        if ref.run_id and _live_run_tags(client, ref.run_id) is None:
            repairs.append(_run_gone(ref))
            continue
        record_on_run(client, ref.run_id, name, ref.version, ref.tags)
    for line in repairs:
        log.warning("registry %s reconciled: %s", name, line)
    return repairs


def _live_run_tags(client: Any, run_id: str) -> dict[str, str] | None:
    """The run's tags, or None when the run was deleted (``mlflow gc`` may have removed it entirely)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise
    return None if run.info.lifecycle_stage == "deleted" else run.data.tags


def _run_gone(ref: ModelRef) -> str:
    return f"version {ref.version}: its run {ref.run_id} was deleted; decision {ref.decision!r} kept on the version only"


def _has_record(run_tags: dict[str, str], ref: ModelRef) -> bool:
    return (run_tags.get(RUN_MODEL_TAG), run_tags.get(RUN_VERSION_TAG), run_tags.get(DECISION_TAG)) == (ref.name, ref.version, ref.decision)
