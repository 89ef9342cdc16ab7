"""The typed ``agents:`` section and the run budgets checked before each decision."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from opsfabric.agents.guardrails import check_budget_before_model
from opsfabric.agents.settings import AgentsSettings, BudgetSettings, ProfileSettings
from opsfabric.errors import ConfigError

pytestmark = pytest.mark.unit


def test_repo_config_loads_the_offline_defaults(make_settings):
    agents = make_settings().agents
    assert agents.model.kind == "offline" and agents.default_profile == "operator"
    assert "promote_model_version" in agents.profiles["operator"].approval_required
    assert "promote_model_version" not in agents.profiles["viewer"].tools


def test_unknown_agents_key_is_named(make_settings):
    with pytest.raises(ConfigError, match=r"agents\.profiles\.viewer\.budget\.max_tool_cals"):
        make_settings(agents={"profiles": {"viewer": {"tools": ["index_status"], "budget": {"max_tool_cals": 3}}}})


def test_endpoint_model_is_a_discriminated_choice(make_settings):
    agents = make_settings(agents={"model": {"kind": "openai", "base_url": "http://127.0.0.1:11434/v1"}}).agents
    assert agents.model.kind == "openai" and agents.model.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(ConfigError, match=r"agents\.model\.openai\.base_url"):
        make_settings(agents={"model": {"kind": "openai"}})


def test_a_risky_tool_cannot_be_allowed_without_approval():
    with pytest.raises(ValueError, match=r"risky tools \['promote_model_version'\] are allowed without approval"):
        ProfileSettings(tools=["promote_model_version"], approval_required=[])
    with pytest.raises(ValueError, match="default_profile 'ops'"):
        AgentsSettings(default_profile="ops")


def _history(steps: int, tokens: int = 0):
    usage = {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens}
    return [HumanMessage("x")] + [AIMessage("", usage_metadata=usage) for _ in range(steps)]


@pytest.mark.parametrize(
    "budget, history, price, elapsed, rule",
    [
        (BudgetSettings(max_steps=3), _history(2), 0.0, 0.0, None),
        (BudgetSettings(max_steps=3), _history(3), 0.0, 0.0, "budget:steps"),
        (BudgetSettings(max_tokens=1000), _history(2, tokens=400), 0.0, 0.0, None),
        (BudgetSettings(max_tokens=1000), _history(3, tokens=400), 0.0, 0.0, "budget:tokens"),
        (BudgetSettings(max_cost_usd=0.01), _history(2, tokens=400), 0.01, 0.0, None),
        (BudgetSettings(max_cost_usd=0.01), _history(3, tokens=400), 0.01, 0.0, "budget:cost"),
        (BudgetSettings(max_wall_seconds=5), _history(1), 0.0, 5.5, "budget:wall_time"),
    ],
)
def test_budgets_before_each_decision(budget, history, price, elapsed, rule):
    refusal = check_budget_before_model(history, budget, price_in=price, price_out=price, elapsed_seconds=elapsed)
    assert (refusal.rule if refusal else None) == rule


def test_budgets_count_only_the_current_request():
    history = _history(5) + [HumanMessage("a new request")] + _history(1)[1:]
    assert check_budget_before_model(history, BudgetSettings(max_steps=3), price_in=0, price_out=0, elapsed_seconds=0) is None
