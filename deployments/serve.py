"""Serve every deployment with its schedule from this process (needs a Prefect server: PREFECT_API_URL).

    make ui                                     # terminal 1: Prefect server + UI on :4200
    PREFECT_API_URL=http://127.0.0.1:4200/api make deploy   # terminal 2
"""

from __future__ import annotations

from opsfabric.runtime_env import configure_runtime_env

configure_runtime_env()

from prefect import serve  # noqa: E402

from deployments.definitions import DEPLOYMENTS  # noqa: E402


def runner_deployments():
    return [
        spec.load_flow().to_deployment(
            name=spec.name, cron=spec.cron, parameters=spec.parameters, description=spec.description, tags=list(spec.tags)
        )
        for spec in DEPLOYMENTS
    ]


if __name__ == "__main__":
    serve(*runner_deployments())
