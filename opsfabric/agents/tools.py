"""The agent's tools: typed argument schemas, one backend interface, LangChain tool objects.

The graph, the guardrails and the tests depend only on :class:`OpsBackend` (one method per tool),
not on the ML/RAG module layout: ``opsfabric.agents.backend`` holds the implementation that calls
the project's functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from opsfabric.agents.errors import ToolArgumentError
from opsfabric.agents.matching import tool_fingerprint

BATCH_PATTERN = r"^batch_\d{2}$"
INDEX_VERSION_PATTERN = r"^docs-v\d{4}$"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchDocsArgs(_Args):
    query: str = Field(min_length=3, max_length=500, description="What to look for in the documentation.")
    top_k: int = Field(default=3, ge=1, le=10, description="How many passages to return.")


class ChampionInfoArgs(_Args):
    pass


class CompareModelVersionsArgs(_Args):
    version_a: int = Field(ge=1, description="First registered model version number.")
    version_b: int = Field(ge=1, description="Second registered model version number.")

    @model_validator(mode="after")
    def _different(self) -> "CompareModelVersionsArgs":
        if self.version_a == self.version_b:
            raise ValueError("version_b must differ from version_a")
        return self


class LatestDriftVerdictArgs(_Args):
    batch: str | None = Field(default=None, pattern=BATCH_PATTERN, description="Batch name like batch_02; none: the latest batch.")


class IndexStatusArgs(_Args):
    pass


class TriggerRetrainingArgs(_Args):
    batch: str = Field(pattern=BATCH_PATTERN, description="The production batch to retrain on, like batch_03.")
    reason: str = Field(default="requested through the ops agent", min_length=3, max_length=300)


class RollbackIndexAliasArgs(_Args):
    to_version: str | None = Field(default=None, pattern=INDEX_VERSION_PATTERN, description="Index version like docs-v0002; none: the previous one.")
    reason: str = Field(default="requested through the ops agent", min_length=3, max_length=300)


class PromoteModelVersionArgs(_Args):
    version: int = Field(ge=1, description="Registered model version number to make champion.")
    reason: str = Field(default="requested through the ops agent", min_length=3, max_length=300)


class OpsBackend(Protocol):
    """What the agent can do to the platform: one method per tool, plain JSON-able results."""

    def search_docs(self, query: str, top_k: int = 3) -> dict[str, Any]: ...
    def champion_info(self) -> dict[str, Any]: ...
    def compare_model_versions(self, version_a: int, version_b: int) -> dict[str, Any]: ...
    def latest_drift_verdict(self, batch: str | None = None) -> dict[str, Any]: ...
    def index_status(self) -> dict[str, Any]: ...
    def trigger_retraining(self, batch: str, reason: str) -> dict[str, Any]: ...
    def rollback_index_alias(self, to_version: str | None, reason: str) -> dict[str, Any]: ...
    def promote_model_version(self, version: int, reason: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, what the model reads about it, its argument schema, whether it is risky."""

    name: str
    description: str
    args_model: type[BaseModel]
    risky: bool

    @property
    def parameters(self) -> dict[str, Any]:
        return self.args_model.model_json_schema()

    @property
    def fingerprint(self) -> dict[str, str]:
        return tool_fingerprint(self.description, self.parameters)


TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec("search_docs", "Search the documentation: what do the docs, runbooks and knowledge base say about a topic? Returns passages with citations.", SearchDocsArgs, False),
    ToolSpec("champion_info", "Show the current champion model: its version, scores and the registered model versions.", ChampionInfoArgs, False),
    ToolSpec("compare_model_versions", "Compare the metrics of two registered model versions side by side.", CompareModelVersionsArgs, False),
    ToolSpec("latest_drift_verdict", "Check data drift: the latest drift monitoring verdict for a production batch.", LatestDriftVerdictArgs, False),
    ToolSpec("index_status", "Show the search index status: index versions, evaluation scores and where the live alias points.", IndexStatusArgs, False),
    ToolSpec("trigger_retraining", "Retrain the churn model on a production batch (starts a training run).", TriggerRetrainingArgs, True),
    ToolSpec("rollback_index_alias", "Roll back the live search index alias to a previous index version.", RollbackIndexAliasArgs, True),
    ToolSpec("promote_model_version", "Promote a registered model version to champion.", PromoteModelVersionArgs, True),
)
SPECS_BY_NAME = {spec.name: spec for spec in TOOL_SPECS}


def tool_fingerprints(specs: tuple[ToolSpec, ...] | list[ToolSpec] = TOOL_SPECS) -> dict[str, dict[str, str]]:
    """Schema fingerprints of every tool, as goldens record them."""
    return {s.name: s.fingerprint for s in specs}


def validate_args(spec: ToolSpec, args: dict[str, Any]) -> dict[str, Any]:
    """The validated arguments (defaults filled), or :class:`ToolArgumentError` naming each bad field."""
    try:
        return spec.args_model.model_validate(args).model_dump()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(arguments)"
            problems.append(f"{field}: {err['msg']}")
        raise ToolArgumentError(
            f"tool {spec.name} refused its arguments: " + "; ".join(problems),
            hint=f"arguments must match the {spec.args_model.__name__} schema",
        ) from None


def result_text(result: dict[str, Any]) -> str:
    """A tool result as the JSON text the model reads (sorted keys: deterministic)."""
    return json.dumps(result, sort_keys=True, default=str)


def make_tools(backend: OpsBackend, specs: tuple[ToolSpec, ...] | list[ToolSpec] = TOOL_SPECS) -> list[Any]:
    """LangChain tools over ``backend`` (every tool, whatever the profile: the allowlist is a guardrail)."""
    from langchain_core.tools import StructuredTool

    def bind(spec: ToolSpec) -> Callable[..., str]:
        method = getattr(backend, spec.name)

        def run(**kwargs: Any) -> str:
            return result_text(method(**kwargs))

        return run

    return [
        StructuredTool.from_function(func=bind(s), name=s.name, description=s.description, args_schema=s.args_model)
        for s in specs
    ]
