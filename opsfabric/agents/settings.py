"""Typed ``agents:`` section of the configuration.

The agent pipeline (issue 9) adds its profiles, budgets and endpoints here. Until then the section
takes no keys, so a typo or a key from a newer configuration fails when the config loads.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class AgentsSettings(BaseModel):
    """Configuration of the agents (no keys yet)."""

    model_config = ConfigDict(extra="forbid")
