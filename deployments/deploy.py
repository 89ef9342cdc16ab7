"""Register every deployment with a process work pool, for Prefect workers to run (scale-out).

    prefect work-pool create opsfabric --type process     # once
    python -m deployments.deploy [--pool opsfabric]
    prefect worker start --pool opsfabric                 # on each worker machine (same repo path)
"""

from __future__ import annotations

import argparse

from opsfabric.runtime_env import configure_runtime_env

configure_runtime_env()

from prefect import flow  # noqa: E402

from deployments.definitions import DEPLOYMENTS  # noqa: E402
from opsfabric.settings import PROJECT_ROOT  # noqa: E402


def deploy_all(pool: str) -> list[str]:
    ids = []
    for spec in DEPLOYMENTS:
        source_flow = flow.from_source(source=str(PROJECT_ROOT), entrypoint=spec.entrypoint)
        ids.append(
            str(
                source_flow.deploy(
                    name=spec.name,
                    work_pool_name=pool,
                    cron=spec.cron,
                    parameters=spec.parameters,
                    description=spec.description,
                    tags=list(spec.tags),
                )
            )
        )
    return ids


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="opsfabric")
    print(deploy_all(parser.parse_args().pool))
