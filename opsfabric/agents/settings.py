"""Typed ``agents:`` section of the configuration (profiles, budgets, decision model, suite).

Defaults live here, so a configuration without an ``agents:`` section runs the offline agent.
Every model forbids unknown keys: a typo in YAML is an error that names the key.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

READ_ONLY_TOOLS = ("search_docs", "champion_info", "compare_model_versions", "latest_drift_verdict", "index_status")
RISKY_TOOLS = ("trigger_retraining", "rollback_index_alias", "promote_model_version")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetSettings(_Section):
    """Hard limits of one run; a breach stops the run with a recorded reason."""

    max_steps: int = Field(default=10, ge=1, description="Model calls (decision steps) per run.")
    max_tool_calls: int = Field(default=8, ge=0, description="Tool calls proposed per run (refused ones count).")
    max_tokens: int = Field(default=50_000, ge=0, description="Input + output tokens per run (reported or estimated).")
    max_cost_usd: float = Field(default=0.50, ge=0, description="Estimated cost per run.")
    max_wall_seconds: float = Field(default=120.0, gt=0, description="Agent time per run, summed over its resumes (human waits excluded).")


class ProfileSettings(_Section):
    """Who may do what: a hard tool allowlist and the budget."""

    tools: list[str] = Field(description="Allowlist: any other tool call is refused before it runs.")
    approval_required: list[str] = Field(default_factory=lambda: list(RISKY_TOOLS), description="Tools that wait for a human decision.")
    budget: BudgetSettings = Field(default_factory=BudgetSettings)

    @model_validator(mode="after")
    def _risky_tools_need_approval(self) -> "ProfileSettings":
        unapproved = [t for t in self.tools if t in RISKY_TOOLS and t not in self.approval_required]
        if unapproved:
            raise ValueError(f"risky tools {unapproved} are allowed without approval; add them to approval_required")
        return self


class OfflinePlannerSettings(_Section):
    """The deterministic planner: MiniLM routing, rule-based arguments, abstention."""

    kind: Literal["offline"] = "offline"
    min_similarity: float = Field(default=0.30, ge=-1, le=1, description="Abstain when the best tool scores below this.")
    min_similarity_risky: float = Field(default=0.45, ge=-1, le=1, description="The same floor when the best tool is a risky one.")
    min_margin: float = Field(default=0.02, ge=0, le=2, description="Abstain when the two best tools are closer than this.")
    max_retries: int = Field(default=5, ge=0, description="Re-issue a failed call this often (the loop guard may stop it first).")


class EndpointModelSettings(_Section):
    """An OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server, OpenAI).

    ``tool_calling`` chooses how a decision is asked for: ``native`` sends the tools in the
    request's ``tools`` field (servers with working tool calling); ``json_schema`` asks for one
    JSON object constrained by a schema with one alternative per tool and one for a text answer
    (servers whose native path is broken, such as llama-cpp-python's). Either way the graph,
    guardrails, approvals and traces are the same.
    """

    kind: Literal["openai"] = "openai"
    base_url: str = Field(description="OpenAI-compatible base URL (…/v1); `local`: the server `make llm` starts (llm.server).")
    model: str = "gpt-4o-mini"
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Name of the environment variable holding the key.")
    tool_calling: Literal["native", "json_schema"] = Field(default="native", description="native: the `tools` field; json_schema: schema-constrained JSON replies.")
    prompt: str = Field(default="configs/prompts/agent.v1.yaml", description="Versioned prompt file (system text, JSON instructions, few-shot examples).")
    few_shot: bool = Field(default=True, description="json_schema mode: show the prompt file's examples before the request.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    seed: int | None = Field(default=0, description="Sent with every request (servers that honour it sample reproducibly); null: none sent.")
    max_tokens: int = Field(default=256, ge=16, description="Reply length limit per decision.")
    cache_warmup: bool = Field(default=False, description="json_schema mode: send a prefix-only request before a run's first decision, so a "
                               "prefix-caching server (llama.cpp) is in the same state whatever came before and a seed reproduces its "
                               "trajectory (costs one short request per run; off for billed endpoints).")
    timeout_seconds: float = 60.0
    price_per_1k_input_tokens: float = Field(default=0.0, ge=0, description="USD per 1k input tokens (0 for a local model: its cost is the machine's, not billed).")
    price_per_1k_output_tokens: float = Field(default=0.0, ge=0)


DecisionModelSettings = Annotated[Union[OfflinePlannerSettings, EndpointModelSettings], Field(discriminator="kind")]


class RegressionSettings(_Section):
    """The golden suite's trials and its statistical gate (``opsfabric.agents.regression_gate``)."""

    trials: int = Field(default=1, ge=1, description="Trials per scenario (K); seeds seed..seed+K-1 go to the model. The offline planner is deterministic: 1.")
    seed: int = Field(default=0, description="First seed of the trials.")
    max_trials: int | None = Field(default=None, ge=1, description="Adaptive sampling: up to this many trials, stopping a scenario once its "
                                   "Wilson interval is clearly above or below the gate's threshold; null: exactly `trials`.")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="A drop in pass rate is a regression when its one-sided exact test is below this.")
    min_effect: float = Field(default=0.2, ge=0, le=1, description="... and the scenario's pass rate dropped by at least this much.")
    suite_min_effect: float = Field(default=0.05, ge=0, le=1, description="The same for the pooled suite pass rate.")
    new_floor: float = Field(default=0.8, ge=0, le=1, description="A scenario without a baseline must pass at least this share of its trials.")
    correction: Literal["holm", "none"] = Field(default="holm", description="Multiple-comparison correction over the scenarios.")
    quarantine_file: str = Field(default="data/golden/agent_quarantine.yaml", description="Reviewed quarantine entries (reason, owner, expiry).")


def _default_profiles() -> dict[str, ProfileSettings]:
    return {
        "operator": ProfileSettings(tools=[*READ_ONLY_TOOLS, *RISKY_TOOLS]),
        "viewer": ProfileSettings(tools=list(READ_ONLY_TOOLS)),
    }


class AgentsSettings(_Section):
    """Configuration of the ops agent."""

    model: DecisionModelSettings = Field(default_factory=OfflinePlannerSettings)
    default_profile: str = "operator"
    profiles: dict[str, ProfileSettings] = Field(default_factory=_default_profiles)
    recursion_limit: int = Field(
        default=50, ge=5,
        description="LangGraph super-steps per invocation (explicit, never the ~10k default). A decision with its tool "
        "calls takes about 4 super-steps: keep it above 4 x max_steps + 2 so the steps budget stops a run first, with "
        "its own reason; this limit is the backstop.")
    loop_max_repeats: int = Field(default=2, ge=1, description="A (tool, canonical arguments) pair proposed more often than this is a loop.")
    golden_dir: str = Field(default="data/golden/agent", description="Scenario files of the regression suite (git + DVC dep).")
    regression: RegressionSettings = Field(default_factory=RegressionSettings)
    metrics_path: str = Field(default="metrics/agent_regression.json", description="DVC metrics of the suite (stage agent_regression).")
    report_dir: str = Field(default="reports/agent_regression", description="DVC output: per-scenario diffs and verdicts.")
    sqlite_busy_timeout_seconds: float = Field(default=30.0, gt=0)
    max_request_chars: int = Field(default=2000, ge=1, description="Longer requests are refused before the agent runs (RequestError).")
    retrain_wait_seconds: float = Field(
        default=90.0, gt=0,
        description="trigger_retraining waits this long for the retrain run's outcome; a longer run keeps going and is "
        "reported as running (keep it below the profiles' max_wall_seconds).",
    )

    @model_validator(mode="after")
    def _default_profile_exists(self) -> "AgentsSettings":
        if self.default_profile not in self.profiles:
            raise ValueError(f"default_profile {self.default_profile!r} is not one of the profiles {sorted(self.profiles)}")
        return self
