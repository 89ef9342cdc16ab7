"""AgentOps: LangGraph agents with tools, guardrails, human approval and golden-trace regression."""
