"""Register every deployment from the git source with a process work pool, for Prefect workers to run.

    prefect work-pool create opsfabric --type process     # once (make serve does it for you)
    python -m deployments.deploy [--pool opsfabric]
    prefect worker start --pool opsfabric                 # on each worker machine: it clones the repository per run

The code comes from ``orchestration.source`` (default: this checkout's origin, else its file:// URL;
the current branch). What a run needs from this machine (the state folder, where the data lives,
how to retrain) goes into the deployments' ``job_variables`` env: see :func:`runtime_env`.
"""

from __future__ import annotations

import argparse
import logging
import os

from opsfabric.runtime_env import configure_runtime_env

configure_runtime_env()

from prefect import flow  # noqa: E402

from deployments.definitions import DEPLOYMENTS, DeploymentSpec  # noqa: E402
from deployments.source import GitSource, resolve_git_source  # noqa: E402
from opsfabric.errors import ConfigError  # noqa: E402
from opsfabric.settings import PROJECT_ROOT, Settings, load_settings  # noqa: E402

log = logging.getLogger("opsfabric.deployments")


def runtime_env(settings: Settings, retrain_via: str | None = None) -> dict[str, str]:
    """The environment a deployment's flow run gets on top of its worker's.

    A worker runs each flow from a fresh clone: project-relative paths (data, corpus, a relative
    state folder) must point back at this checkout (``orchestration.data_root``), and the state
    folder must be the one ``make run`` and the UI use. ``OPSFABRIC_CONFIG`` is passed on when set
    (relative names resolve against the clone's committed ``configs/``).
    """
    env = {
        "OPSFABRIC_STATE_DIR": str(settings.state_dir),
        "OPSFABRIC_ORCHESTRATION__DATA_ROOT": str(settings.orchestration.data_root or settings.project_root),
    }
    if os.environ.get("OPSFABRIC_CONFIG"):  # relative names resolve against the clone: its committed configs/
        env["OPSFABRIC_CONFIG"] = os.environ["OPSFABRIC_CONFIG"]
    if retrain_via:
        env["OPSFABRIC_ORCHESTRATION__RETRAIN_VIA"] = retrain_via
    return env


def deploy_one(spec: DeploymentSpec, source: GitSource, pool: str, env: dict[str, str]) -> str:
    """Register one deployment (schedule, parameters, automations) that clones ``source`` for every run."""
    try:
        source_flow = flow.from_source(source=source.storage(), entrypoint=spec.entrypoint)
    except RuntimeError as exc:  # Prefect's message carries git's stderr
        raise ConfigError(
            f"cannot load {spec.entrypoint} from {source.url} (branch {source.ref}): {exc}",
            hint="check the URL and branch, or set OPSFABRIC_ORCHESTRATION__SOURCE__URL / __REF (docs/control_room.md)",
        ) from exc
    deployment_id = source_flow.deploy(
        name=spec.name,
        work_pool_name=pool,
        cron=spec.cron,
        parameters=spec.parameters,
        description=spec.description,
        tags=list(spec.tags),
        triggers=spec.build_triggers(),
        job_variables={"env": env},
        print_next_steps=False,
    )
    return str(deployment_id)


def deploy_all(
    pool: str,
    *,
    source: GitSource | None = None,
    env: dict[str, str] | None = None,
    settings: Settings | None = None,
    specs: list[DeploymentSpec] | None = None,
) -> list[str]:
    """Register every deployment (or ``specs``) with work pool ``pool``; return their ids.

    Args:
        pool: a process work pool (it must exist).
        source: where workers clone the code; default :func:`deployments.source.resolve_git_source`.
        env: job environment baked into every deployment; default none, so each worker's own environment
            (OPSFABRIC_STATE_DIR, OPSFABRIC_CONFIG, ...) decides: job variables override a worker's
            environment. The control room, whose worker shares this machine, passes :func:`runtime_env`.
        settings: default :func:`opsfabric.settings.load_settings`.
        specs: default every entry of ``deployments.definitions.DEPLOYMENTS``.
    """
    settings = settings or load_settings()
    source = source or resolve_git_source(settings, PROJECT_ROOT)
    log.info("deployments clone %s (branch %s): %s", source.url, source.ref, source.chosen_because)
    env = {} if env is None else env
    return [deploy_one(spec, source, pool, env) for spec in (specs or DEPLOYMENTS)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=None, help="work pool (default: orchestration.control_room.work_pool)")
    parser.add_argument("--bake-env", action="store_true",
                        help="bake this checkout's state folder and data root into the deployments (one machine only); "
                        "default: each worker's environment decides")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings()
    print(deploy_all(options.pool or settings.orchestration.control_room.work_pool, settings=settings,
                     env=runtime_env(settings) if options.bake_env else None))
