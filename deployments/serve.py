"""Serve every deployment with its schedule from this process (needs a Prefect server: PREFECT_API_URL).

    make ui                                     # terminal 1: Prefect server + UI on :4200
    PREFECT_API_URL=http://127.0.0.1:4200/api make deploy   # terminal 2

Runs start from this process as subprocesses (python -m prefect.engine), from this checkout (no work pool, no git clone). ``make serve``
(``deployments.control_room``) is the all-in-one alternative: server, UI, work pool and worker.
"""

from __future__ import annotations

import os

from opsfabric.runtime_env import configure_runtime_env

configure_runtime_env()

from prefect import serve  # noqa: E402

from deployments.definitions import DEPLOYMENTS  # noqa: E402


def runner_deployments():
    return [
        spec.load_flow().to_deployment(
            name=spec.name,
            cron=spec.cron,
            parameters=spec.parameters,
            description=spec.description,
            tags=list(spec.tags),
            triggers=spec.build_triggers(),
        )
        for spec in DEPLOYMENTS
    ]


if __name__ == "__main__":
    # Served runs share this process's environment: the retrain deployment's automation does the
    # retraining a drifted monitor run asks for (unless the environment says otherwise).
    os.environ.setdefault("OPSFABRIC_ORCHESTRATION__RETRAIN_VIA", "event")
    serve(*runner_deployments())
