"""The few errors the agents raise on purpose (all :class:`opsfabric.errors.OpsFabricError`)."""

from __future__ import annotations

from opsfabric.errors import OpsFabricError


class AgentError(OpsFabricError):
    """Root of the agent errors."""


class GoldenError(AgentError):
    """A golden scenario file is malformed, or a record/approve would overwrite one silently."""


class RequestError(AgentError):
    """A request refused before the agent runs: empty, or longer than ``agents.max_request_chars``."""


class ThreadStateError(AgentError):
    """An approval names a thread that is unknown, finished, or already answered."""


class ToolArgumentError(AgentError):
    """A tool was called with arguments its schema refuses (the message names the field)."""


class GuardrailBreach(AgentError):
    """A guardrail stopped the run; ``reason`` is the recorded, machine-readable reason."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.reason = reason


class BackendError(AgentError):
    """A tool's backend call failed (registry, index, drift store unavailable or empty)."""
