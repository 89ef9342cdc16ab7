"""Errors of the local model server (all named: the command line prints message and hint)."""

from __future__ import annotations

from opsfabric.errors import OpsFabricError


class LocalModelError(OpsFabricError):
    """The local model server cannot start or stopped answering: extra missing, port taken, model file missing."""


class EndpointUnavailableError(OpsFabricError):
    """A configured chat endpoint did not answer (connection refused, timeout, HTTP error): names the URL."""
