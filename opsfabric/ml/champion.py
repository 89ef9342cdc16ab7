"""The champion: the registered version the alias points at, loaded by its own version URI.

The alias is resolved once; the model, its version number, its eval score and its decision
threshold all come from that one version, so what a run reports is what it used even if the alias
moves meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opsfabric import tracking
from opsfabric.ml.errors import NoChampionError
from opsfabric.ml.registry import ModelRef, get_champion
from opsfabric.settings import Settings


@dataclass
class Champion:
    """A model ready to score, with what was recorded with it.

    Attributes:
        model: the fitted pipeline.
        version: the registry version (``dvc`` for the DVC pipeline's local model).
        reference_score: its gate metric on its own eval data, the baseline of a performance drop
            (None: unknown, performance is not checked).
        decision_threshold: the probability at or above which it labels a row positive.
    """

    model: Any
    version: str
    reference_score: float | None
    decision_threshold: float


def load_version(settings: Settings, ref: ModelRef) -> Champion:
    """Load one registered version by its version URI (``models:/<name>/<version>``)."""
    score_tag = ref.tags.get(f"eval_{settings.ml.gate.metric}")
    return Champion(
        model=tracking.load_sklearn_model(settings, ref.uri),
        version=ref.version,
        reference_score=float(score_tag) if score_tag is not None else None,
        decision_threshold=ref.decision_threshold,
    )


def load_champion(settings: Settings) -> Champion:
    """The current champion: the alias read once, then that version loaded.

    Raises:
        NoChampionError: no version has the champion alias yet.
    """
    name, alias = settings.ml.registered_model, settings.ml.champion_alias
    ref = get_champion(tracking.mlflow_client(settings), name, alias)
    if ref is None:
        raise NoChampionError(f"no version of {name!r} has alias {alias!r}", hint="run the train flow first: python -m flows.train")
    return load_version(settings, ref)
