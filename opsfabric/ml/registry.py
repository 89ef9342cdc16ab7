"""Model registry operations that either complete or leave the registry as it was.

MLflow 3 aliases (not stages) mark the champion. A candidate is registered as a new version with
its gate decision in its tags; only a promoted candidate moves the alias. If anything fails after
the version was created, the version is deleted and the alias is put back where it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from opsfabric.ml.errors import RegistrationError
from opsfabric.ml.gate import GateDecision

log = logging.getLogger(__name__)


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
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class RegistrationResult:
    version: ModelRef
    promoted: bool
    previous_champion: str | None


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "NOT_FOUND" in str(code)


def get_champion(client: Any, name: str, alias: str) -> ModelRef | None:
    """The version the alias points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _is_not_found(exc) or "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise
    return ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source, tags=dict(mv.tags))


def list_versions(client: Any, name: str) -> list[str]:
    """All version numbers of a registered model (empty if it does not exist)."""
    return sorted((str(mv.version) for mv in client.search_model_versions(f"name='{name}'")), key=int)


def register_candidate(
    client: Any,
    *,
    name: str,
    alias: str,
    model_uri: str,
    run_id: str,
    decision: GateDecision,
    tags: dict[str, str],
) -> RegistrationResult:
    """Register a candidate version and, if the gate approved it, point ``alias`` at it.

    Either every step succeeds, or the new version is deleted, the alias restored, and a newly
    created registered model removed again.

    Raises:
        RegistrationError: a registry call failed; the registry is as it was before the call.
    """
    from mlflow.exceptions import MlflowException

    created_model = False
    version: str | None = None
    previous = get_champion(client, name, alias)
    try:
        try:
            client.create_registered_model(name, description="Registered by OpsFabric; champion marked by alias.")
            created_model = True
        except MlflowException as exc:
            if "ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")):
                raise
        gate_tags = {
            "gate.decision": "promoted" if decision.approved else "rejected",
            "gate.metric": decision.metric,
            "gate.candidate_score": f"{decision.candidate_score:.6f}",
            "gate.champion_score": "none" if decision.champion_score is None else f"{decision.champion_score:.6f}",
            "gate.reasons": " | ".join(decision.reasons)[:4900],
            "gate.previous_champion": previous.version if previous else "none",
        }
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        mv = client.create_model_version(
            name, source=model_uri, run_id=run_id, tags={**tags, **gate_tags}, model_id=model_id
        )
        version = str(mv.version)
        if decision.approved:
            client.set_registered_model_alias(name, alias, version)
        result = RegistrationResult(
            version=ModelRef(name, version, run_id, mv.source, {**tags, **gate_tags}),
            promoted=decision.approved,
            previous_champion=previous.version if previous else None,
        )
    except Exception as exc:
        _roll_back(client, name, alias, version, previous, created_model)
        raise RegistrationError(
            f"registering {name!r} from run {run_id} failed and was rolled back "
            f"(champion stays {previous.version if previous else 'unset'}): {exc}"
        ) from exc
    return result


def _roll_back(client: Any, name: str, alias: str, version: str | None, previous: ModelRef | None, created_model: bool) -> None:
    """Undo a partial registration. Every step is attempted; failures are logged, not hidden."""
    steps = []
    if previous is not None:
        steps.append(("restore alias", lambda: client.set_registered_model_alias(name, alias, previous.version)))
    if version is not None:
        steps.append(("delete version", lambda: client.delete_model_version(name, version)))
    if created_model:
        steps.append(("delete registered model", lambda: client.delete_registered_model(name)))
    for label, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - keep rolling back; the original error is raised
            log.error("roll back of %s: %s failed: %s", name, label, exc)


def promote_version(client: Any, name: str, alias: str, version: str) -> str | None:
    """Point ``alias`` at ``version`` (a manual promotion or a rollback); return the previous version."""
    previous = get_champion(client, name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    return previous.version if previous else None
