"""The gate: may a new index version take the live alias? A pure function and the decision it returns.

No I/O: the scores come from :mod:`opsfabric.rag.evaluation` (candidate and live version on the same
golden set, in the same run); applying the decision is :mod:`opsfabric.rag.promotion`'s job.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from opsfabric.rag.golden import SPLITS
from opsfabric.rag.settings import GateParams


@dataclass(frozen=True)
class GoLiveDecision:
    """Whether a new index version may take the live alias, and why."""

    approved: bool
    reasons: list[str] = field(default_factory=list)
    candidate: str = ""
    live: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def should_go_live(
    candidate_scores: dict[str, float],
    policy: GateParams,
    *,
    live_scores: dict[str, float] | None = None,
    candidate: str = "",
    live: str | None = None,
    not_compared: str | None = None,
) -> GoLiveDecision:
    """Every threshold must be met and the candidate may not trail the live version by more than
    ``policy.max_regression`` on ``policy.primary_metric``. ``live_scores`` must come from the same
    golden set in the same run. A missing or NaN metric never passes, nor does a metric that is NaN
    for more than ``policy.max_nan_share`` of the questions (``<metric>_nan_share`` in the scores).
    ``not_compared`` says why a live version was not evaluated (recorded among the reasons).

    Only metrics with a threshold are gated: LLM-judge scores (``faithfulness_judge_<model>``...)
    are not, unless ``policy.thresholds`` names them. An ungated metric that is NaN for some
    questions is still named among the reasons (reported, not gated).
    """
    reasons, ok = [], True
    for metric, floor in sorted(policy.thresholds.items()):
        value = candidate_scores.get(metric)
        nan_share = candidate_scores.get(f"{metric}_nan_share")
        if value is not None and math.isnan(value) and nan_share:
            ok = False
            reasons.append(f"{metric} is NaN for {nan_share:.0%} of the questions (threshold {floor}; no score to compare)")
        elif value is None or math.isnan(value):
            ok = False
            reasons.append(f"{metric} is missing or NaN (threshold {floor})")
        elif candidate_scores.get(f"{metric}_nan_share", 0.0) > policy.max_nan_share:
            ok = False
            reasons.append(
                f"{metric} is NaN for {candidate_scores[f'{metric}_nan_share']:.0%} of the questions "
                f"(> rag.gate.max_nan_share={policy.max_nan_share})"
            )
        elif value < floor:
            ok = False
            reasons.append(f"{metric}={value:.4f} is below the threshold {floor}")
        else:
            reasons.append(f"{metric}={value:.4f} >= {floor}")
    if live_scores is not None and live:
        metric = policy.primary_metric
        cand, champ = candidate_scores.get(metric), live_scores.get(metric)
        if cand is None or champ is None or math.isnan(cand) or math.isnan(champ):
            ok = False
            reasons.append(f"{metric} missing for candidate or live version {live}: cannot compare")
        elif cand < champ - policy.max_regression:
            ok = False
            reasons.append(f"{metric}={cand:.4f} trails live {live} ({champ:.4f}) by more than {policy.max_regression}")
        else:
            reasons.append(f"{metric}={cand:.4f} vs live {live} {champ:.4f} (allowed regression {policy.max_regression})")
    elif live is None:
        reasons.append("no live version yet")
    elif not_compared:
        reasons.append(not_compared)
    for key, share in sorted(candidate_scores.items()):
        metric = key.removesuffix("_nan_share")
        per_split = metric.split(".", 1)[0] in SPLITS  # the overall figure is named; its per-split ones would repeat it
        if key.endswith("_nan_share") and not per_split and metric not in policy.thresholds and share:
            reasons.append(f"not gated: {metric} is NaN for {share:.0%} of the questions (no threshold configured)")
    return GoLiveDecision(ok, reasons, candidate, live)
