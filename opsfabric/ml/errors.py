"""Errors of the ML pipeline. Each message names the file, column, row or rule at fault."""

from __future__ import annotations

from opsfabric.errors import OpsFabricError, StaleDecisionError


class MLPipelineError(OpsFabricError):
    """Base class for errors the ML pipeline raises on purpose."""


class DataLoadError(MLPipelineError):
    """A data file is missing, empty, unreadable or of an unsupported format."""


class DataValidationError(MLPipelineError):
    """A table broke one or more validation rules. ``report`` holds every failed check."""

    def __init__(self, message: str, report: object | None = None):
        super().__init__(message)
        self.report = report


class RegistrationError(MLPipelineError):
    """Registering or promoting a model failed and was rolled back.

    If a step of the roll back failed too, the message says ``roll back incomplete`` and names it:
    the registry is then left as a gate killed mid-way leaves it, and the next gate reconciles it.
    """


class RegistryLockLostError(RegistrationError):
    """The gate lost the registry lock while writing: another gate reconciled its version as interrupted.

    Possible only with a lock that can expire under its holder (the Prefect lock's lease); the
    gate's alias move was rolled back under the rules of :class:`RegistrationError`.
    """


class EvaluationMismatchError(MLPipelineError, ValueError):
    """The gate was given other eval data than the candidate's metrics were computed on."""


class NoChampionError(MLPipelineError, LookupError):
    """No version of the registered model carries the champion alias (nothing was promoted yet)."""


class StaleChampionError(MLPipelineError, StaleDecisionError):
    """The champion changed between scoring it and moving the alias, more often than the gate re-decides.

    Nothing was registered for the candidate: the decision was never applied.
    """
