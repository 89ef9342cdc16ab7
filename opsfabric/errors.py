"""The root of every error OpsFabric raises on purpose.

Each domain has its own few exceptions (``opsfabric.ml.errors``, ``opsfabric.rag.errors``); they all
derive from :class:`OpsFabricError`, so a command line prints them as a message that names the
file, key, URL or thread at fault, plus what to do, instead of a traceback (``opsfabric.cli``).
"""

from __future__ import annotations


class OpsFabricError(Exception):
    """An error raised on purpose, with a message meant for the person running the command.

    Args:
        message: what went wrong, naming the thing at fault (file, row, key, URL, thread...).
        hint: what to do about it, printed on its own line by the command line.
    """

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class LockTimeoutError(OpsFabricError):
    """A cross-process lock (registry, alias, store) was held by someone else for too long."""


class StaleDecisionError(OpsFabricError):
    """A decision was made on a value (champion, live index) that changed before it could be applied."""


class ConfigError(OpsFabricError, ValueError):
    """A configuration file is missing or malformed, or a key is unknown or has a bad value."""
