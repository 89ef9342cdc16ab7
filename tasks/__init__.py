"""Prefect tasks: thin wrappers (retries, logging, artifacts) over functions in ``opsfabric``."""

from opsfabric.runtime_env import configure_runtime_env

configure_runtime_env()
