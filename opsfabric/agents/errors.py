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


class BackendError(AgentError):
    """A tool's backend refused a call before acting (unknown version, no such batch, nothing to read)."""


class OutcomeUnknownError(BackendError):
    """A risky action started and then failed: it may have changed the platform (never retried)."""
