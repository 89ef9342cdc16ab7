"""Reading the model registry: versions, the champion alias, and the tags the gate writes.

MLflow 3 aliases (not stages) mark the champion. Every write to the registry is made by the gate
(:mod:`opsfabric.ml.promotion`) under the registry lock; this module only names what it writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The gate's decision, tagged on every version it registers. ``promoting`` is the intent written
# before the alias moves; it becomes ``promoted`` once the alias points at the version, or
# ``interrupted`` when the next gate finds that the process died before moving the alias.
DECISION_TAG = "gate.decision"
PROMOTING = "promoting"
PROMOTED = "promoted"
REJECTED = "rejected"
INTERRUPTED = "interrupted"
# The decision threshold the version was trained and evaluated with; scoring uses it.
THRESHOLD_TAG = "decision_threshold"
# Versions registered before the threshold was recorded were all evaluated at 0.5.
UNRECORDED_THRESHOLD = 0.5


@dataclass(frozen=True)
class ModelRef:
    """A registered model version."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        """The version's own URI: loading by it cannot pick up a later alias move."""
        return f"models:/{self.name}/{self.version}"

    @property
    def decision(self) -> str | None:
        return self.tags.get(DECISION_TAG)

    @property
    def decision_threshold(self) -> float:
        return float(self.tags.get(THRESHOLD_TAG, UNRECORDED_THRESHOLD))


def registry_lock(name: str) -> str:
    """The lock resource that guards every write to registered model ``name`` and its aliases."""
    return f"ml-registry-{name}"


def is_not_found(exc: Exception) -> bool:
    """Whether an MLflow error says the model, version, alias or run does not exist."""
    code = str(getattr(exc, "error_code", ""))
    text = str(exc).lower()
    return "RESOURCE_DOES_NOT_EXIST" in code or "NOT_FOUND" in code or "not found" in text or "does not exist" in text


def _ref(mv: Any) -> ModelRef:
    return ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source, tags=dict(mv.tags))


def get_champion(client: Any, name: str, alias: str) -> ModelRef | None:
    """The version the alias points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise
    return _ref(mv)


def model_versions(client: Any, name: str) -> list[ModelRef]:
    """Every version of a registered model, oldest first (empty if the model does not exist)."""
    return sorted((_ref(mv) for mv in client.search_model_versions(f"name='{name}'")), key=lambda ref: int(ref.version))

