"""OpsFabric: MLOps, LLMOps and AgentOps on one orchestrator.

The ``opsfabric`` package holds the plain functions that do the work. ``tasks`` wraps them as
Prefect tasks and ``flows`` wires the tasks into flows. Nothing here imports Prefect.
"""

__version__ = "0.1.0"
