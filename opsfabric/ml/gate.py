"""Decisions as pure functions: promote a candidate? retrain after monitoring?"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from opsfabric.settings import DriftParams, GateParams


@dataclass(frozen=True)
class Decision:
    """A yes/no with the reasons that led to it (the reasons are logged with every decision)."""

    approved: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GateDecision(Decision):
    metric: str = "roc_auc"
    candidate_score: float = float("nan")
    champion_score: float | None = None


def should_promote(candidate_score: float, champion_score: float | None, policy: GateParams) -> GateDecision:
    """Promote when the candidate beats the champion by ``policy.min_improvement``.

    Both scores must come from the same evaluation data. Every candidate must also reach
    ``policy.floor``, so beating a collapsed champion is not enough. A NaN score never promotes.
    """
    common = {"metric": policy.metric, "candidate_score": candidate_score, "champion_score": champion_score}
    if candidate_score is None or math.isnan(candidate_score):
        return GateDecision(False, [f"candidate {policy.metric} is undefined (NaN)"], **common)
    if candidate_score < policy.floor:
        return GateDecision(
            False, [f"candidate {policy.metric}={candidate_score:.4f} is below the floor {policy.floor}"], **common
        )
    if champion_score is None:
        return GateDecision(
            True, [f"no champion yet; candidate {policy.metric}={candidate_score:.4f} reaches floor {policy.floor}"], **common
        )
    improvement = candidate_score - champion_score
    ok = improvement >= policy.min_improvement
    reason = (
        f"candidate {policy.metric}={candidate_score:.4f} vs champion {champion_score:.4f} on the same eval data: "
        f"{improvement:+.4f} ({'>=' if ok else '<'} required {policy.min_improvement:+.4f})"
    )
    return GateDecision(ok, [reason], **common)


@dataclass(frozen=True)
class DriftSummary:
    """What a retrain decision needs from a monitoring run."""

    drift_share: float
    drifted_features: list[str]
    metric: str
    reference_score: float | None = None
    current_score: float | None = None

    @property
    def performance_drop(self) -> float | None:
        if self.reference_score is None or self.current_score is None:
            return None
        return self.reference_score - self.current_score


def should_retrain(summary: DriftSummary, policy: DriftParams) -> Decision:
    """Retrain when enough features drifted or the model's score dropped beyond the thresholds."""
    reasons: list[str] = []
    if summary.drift_share >= policy.drift_share_threshold:
        reasons.append(
            f"data drift: {summary.drift_share:.0%} of features drifted (threshold {policy.drift_share_threshold:.0%}): "
            f"{', '.join(summary.drifted_features)}"
        )
    drop = summary.performance_drop
    if drop is not None and not math.isnan(drop) and drop >= policy.performance_drop_threshold:
        reasons.append(
            f"performance drop: {summary.metric} {summary.reference_score:.4f} -> {summary.current_score:.4f} "
            f"({-drop:+.4f}, threshold -{policy.performance_drop_threshold})"
        )
    if reasons:
        return Decision(True, reasons)
    quiet = [f"{summary.drift_share:.0%} of features drifted (threshold {policy.drift_share_threshold:.0%})"]
    if drop is None:
        quiet.append("no labels in the batch: performance not checked")
    else:
        quiet.append(f"{summary.metric} change {-drop:+.4f} (threshold -{policy.performance_drop_threshold})")
    return Decision(False, quiet)
