"""AgentOps tests: matcher, traces, guardrails, planner, graph, approvals, suite, flows."""
