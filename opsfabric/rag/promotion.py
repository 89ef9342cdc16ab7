"""Promotion of an index version: judge it against the live one, then apply the verdict to the alias.

* :func:`judge_version` evaluates the candidate and the live version on the same golden set and
  asks the gate (:func:`opsfabric.rag.gate.should_go_live`). It writes nothing: the DVC stage uses
  it alone.
* :func:`apply_verdict` moves the alias (or marks the candidate rejected) under the index lock, and
  only if the alias still points where it pointed when the verdict was made (compare-and-set):
  otherwise :class:`StaleGateDecisionError`, and nothing moves.
* :func:`gate_version` (the flows) judges and applies; a stale verdict is judged again against the
  new live version, ``attempts`` times at most. Each attempt can be recorded (an MLflow run each).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

from opsfabric.rag import qdrant, versions
from opsfabric.rag.errors import IndexVersionError, StaleGateDecisionError
from opsfabric.rag.evaluation import EvalResult
from opsfabric.rag.gate import GoLiveDecision, should_go_live
from opsfabric.rag.settings import RagConfig

log = logging.getLogger(__name__)


@dataclass
class GateVerdict:
    """A gate decision and what it was made on."""

    decision: GoLiveDecision
    candidate: EvalResult
    live: EvalResult | None  # the live version's scores on the same golden set, when compared
    live_collection: str | None  # where the alias pointed when both were scored: the compare-and-set value


@dataclass
class GateOutcome:
    """What applying a verdict did to the alias and the registry."""

    verdict: GateVerdict
    promoted: bool
    live_collection: str | None  # where the alias points now
    retired: list[str] = field(default_factory=list)
    attempts: int = 1
    stale: list[str] = field(default_factory=list)  # why earlier verdicts were not applied

    @property
    def decision(self) -> GoLiveDecision:
        return self.verdict.decision

    @property
    def label(self) -> str:
        """promoted | already-live | rejected | live-failing (the live version no longer passes: it stays)."""
        if self.promoted:
            return "promoted"
        if self.decision.approved:
            return "already-live"
        return "live-failing" if self.decision.candidate == self.live_collection else "rejected"

    def summary(self) -> dict:
        return {
            "candidate": self.decision.candidate,
            "approved": self.decision.approved,
            "promoted": self.promoted,
            "outcome": self.label,
            "live_collection": self.live_collection,
            "previous_live": self.verdict.live_collection,
            "reasons": self.decision.reasons,
            "scores": {k: round(v, 4) for k, v in self.verdict.candidate.aggregates.items()},
            "answers_by": self.verdict.candidate.labels,
            "judged_by": self.verdict.candidate.judge_labels or "no LLM judge",
            "retired": self.retired,
            "attempts": self.attempts,
            "stale": self.stale,
        }


def evaluate_collection(config: RagConfig, client: Any, collection: str, embed_model: Any, *, mode: str | None = None) -> EvalResult:
    """Evaluate one collection on the prepared golden set with the configured retrieval and answerer."""
    from opsfabric.rag.answer import make_answerer
    from opsfabric.rag.evaluation import evaluate_version
    from opsfabric.rag.golden import read_golden
    from opsfabric.rag.retrieval import Retriever

    retriever = Retriever(client, collection, embed_model, config.rag.retrieval)
    golden = read_golden(config.golden_prepared, config.golden_source)
    return evaluate_version(config, retriever, make_answerer(config, embed_model), golden, mode=mode)


def judge_version(config: RagConfig, collection: str, embed_model: Any | None = None) -> GateVerdict:
    """Evaluate ``collection`` and the live version on the same golden set, and decide. Writes nothing.

    The live version is compared only when today's queries can search it (same embedding model and
    tokenizer); otherwise the decision rests on the thresholds and its reasons say why.

    Raises:
        IndexVersionError: ``collection`` is not a finished build today's queries can search.
    """
    from opsfabric.rag.embeddings import configured_embedding

    embed_model = embed_model or configured_embedding(config)
    registry = versions.VersionRegistry.load(config)
    versions.check_servable(config, registry.get(collection), "evaluate and gate")
    with versions.index_session(config, f"evaluate {collection}") as client:
        live = qdrant.alias_target(client, config.rag.store.alias)
        candidate = evaluate_collection(config, client, collection, embed_model)
        live_result, not_compared = None, None
        if live and live != collection:
            recorded = registry.find(live)
            if recorded is None:
                not_compared = f"live {live} is not in the registry {registry.path}: not compared"
            elif not versions.query_compatible(recorded.index_config, config.index_config()):
                not_compared = f"live {live} was built with another embedding model or pipeline version (tokenizer): scores not comparable, not compared"
            else:
                live_result = evaluate_collection(config, client, live, embed_model)
    decision = should_go_live(
        candidate.aggregates, config.rag.gate, live_scores=live_result.aggregates if live_result else None,
        candidate=collection, live=live, not_compared=not_compared,
    )
    log.info("gate for %s: %s %s", collection, "GO LIVE" if decision.approved else "rejected", decision.reasons)
    return GateVerdict(decision, candidate, live_result, live)


def apply_verdict(config: RagConfig, verdict: GateVerdict, *, eval_run_id: str | None = None, allow_rolled_back: bool = False) -> GateOutcome:
    """Record the verdict and move the alias if approved, under the index lock, if the alias has not moved since.

    Re-gating the live version records the result but never rejects it: readers still use it.

    Args:
        allow_rolled_back: put a version an operator rolled back live again (only when the operator
            named it, e.g. ``rag_eval --collection``); otherwise such a version is refused.

    Raises:
        StaleGateDecisionError: the alias points elsewhere than when the verdict was made.
        IndexVersionError: the candidate was retired or deleted in the meantime, or rolled back
            and not named explicitly.
    """
    collection = verdict.decision.candidate
    purpose = f"apply the gate decision for {collection}"
    with versions.index_session(config, purpose) as client, versions.reconciled(config, client, purpose) as (registry, live):
        if live != verdict.live_collection:
            raise StaleGateDecisionError(
                f"alias {config.rag.store.alias!r} moved from {verdict.live_collection} to {live} while {collection} "
                "was being evaluated: the decision compared it with the old live version and is not applied",
                hint="evaluate again against the new live version (the flows do this by themselves)",
            )
        version = registry.get(collection)
        versions.check_servable(config, version, "apply the gate decision to")
        if live != collection and not allow_rolled_back:
            check_not_rolled_back(version)
        if not client.collection_exists(collection):
            raise IndexVersionError(f"cannot apply the gate decision to {collection!r}: the collection was deleted")
        version.eval_scores = {k: round(v, 6) for k, v in verdict.candidate.aggregates.items()}
        version.decision = verdict.decision.to_dict()
        version.eval_run_id = eval_run_id
        promoted = False
        if verdict.decision.approved and live != collection:
            versions.promote(client, config, registry, collection)
            promoted = True
        elif not verdict.decision.approved and live != collection:
            version.status = "rejected"
        elif not verdict.decision.approved:
            log.warning("live version %s no longer passes the gate: it stays live (roll back or build a fix)", collection)
        retired = versions.retire_old_versions(client, config, registry)
        now_live = qdrant.alias_target(client, config.rag.store.alias)
    return GateOutcome(verdict, promoted, now_live, retired)


class _Unrecorded:
    """An attempt nobody records (library use, tests): the interface of ``records.EvaluationRun``."""

    run_id = None

    def log_verdict(self, verdict: GateVerdict) -> None: ...

    def log_outcome(self, outcome: GateOutcome) -> None: ...

    def log_stale(self, error: StaleGateDecisionError) -> None: ...


@contextmanager
def _unrecorded() -> Iterator[_Unrecorded]:
    yield _Unrecorded()


def check_not_rolled_back(version: versions.IndexVersion) -> None:
    """Raise if an operator rolled ``version`` back: only naming it explicitly puts it live again.

    Raises:
        IndexVersionError: naming when and by whom it was rolled back.
    """
    if version.rolled_back_at:
        raise IndexVersionError(
            f"{version.collection} was rolled back at {version.rolled_back_at} by {version.rolled_back_by}: "
            "the gate does not put it live again by itself",
            hint=f"to promote it anyway, name it: python -m flows.rag_eval --collection {version.collection}",
        )


def gate_version(
    config: RagConfig,
    collection: str,
    embed_model: Any | None = None,
    *,
    attempts: int | None = None,
    record: Callable[[], ContextManager[Any]] | None = None,
    allow_rolled_back: bool = False,
) -> GateOutcome:
    """Judge ``collection`` and apply the verdict; judge again if the live version changed meanwhile.

    Args:
        allow_rolled_back: the operator named ``collection``: it may go live again even if it was
            rolled back (otherwise such a version is refused before it is evaluated).
        attempts: verdicts tried at most (default ``rag.gate.stale_attempts``); the last stale one raises.
        record: opens one record per attempt (``records.evaluation_run``), which gets the verdict,
            then the outcome or the reason it was stale.

    Raises:
        StaleGateDecisionError: the alias kept moving during ``attempts`` evaluations.
    """
    attempts = attempts or config.rag.gate.stale_attempts
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if not allow_rolled_back:  # fail before minutes of evaluation; apply_verdict checks again under the lock
        version = versions.VersionRegistry.load(config).get(collection)
        versions.check_servable(config, version, "evaluate and gate")  # the error judge_version would give first
        if version.status != "live":
            check_not_rolled_back(version)
    stale: list[str] = []
    for attempt in range(1, attempts + 1):
        with (record or _unrecorded)() as run:
            verdict = judge_version(config, collection, embed_model)
            run.log_verdict(verdict)
            try:
                outcome = apply_verdict(config, verdict, eval_run_id=run.run_id, allow_rolled_back=allow_rolled_back)
            except StaleGateDecisionError as exc:
                run.log_stale(exc)
                stale.append(str(exc))
                log.warning("gate attempt %d/%d for %s: %s", attempt, attempts, collection, exc)
                if attempt == attempts:
                    raise
                continue
            outcome.attempts, outcome.stale = attempt, stale
            run.log_outcome(outcome)
            return outcome
    raise AssertionError("unreachable: the last attempt returns or raises")


def newest_collection(config: RagConfig) -> str:
    """The newest finished build with the current index config that no operator rolled back (what rag-eval evaluates by default)."""
    config_hash = config.index_config_hash()
    registry = versions.VersionRegistry.load(config)
    for version in reversed(registry.versions):
        if version.status in versions.FINISHED and version.config_hash == config_hash and not version.rolled_back_at:
            return version.collection
    raise IndexVersionError(
        f"no built index version for the current index config {config_hash} that was not rolled back",
        hint="run the ingest flow first, or name a rolled-back version with --collection",
    )
