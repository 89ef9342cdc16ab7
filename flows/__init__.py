"""Prefect flows: wiring only. Each module is runnable as ``python -m flows.<name>``."""

from opsfabric.runtime_env import configure_runtime_env

configure_runtime_env()
