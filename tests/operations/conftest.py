"""One real Prefect server, one process worker and every deployment registered from a git source, per session.

Fixtures (reusable by other operations tests, e.g. a browser test of the UI):

* ``source_repo``: a throwaway git repository holding *this working tree's* files, committed
  (uncommitted edits are not in the checkout's own git history, and a worker runs committed code);
  its ``file://`` URL is the deployments' source.
* ``prefect_server``: ``prefect server start`` (UI on) on a free port, own PREFECT_HOME.
* ``ops_env``: the job environment of every deployment run: state folder and data root under the
  session's tmp dir (nothing touches the developer's ``.opsfabric`` or ``data/``), the small
  profile, retraining through the drift event, watermark pattern ``incoming/*.parquet``.
* ``prefect_worker``: ``prefect worker start`` for the pool ``opsfabric``.
* ``registered_deployments``: name -> deployment id, every entry of ``deployments.definitions``.
* ``run_and_wait``: start a deployment run the way the UI's Run button does and wait for its end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import Server, prefect_client_at, snapshot_repo, start_prefect_server, start_worker

POOL = "opsfabric"
RUN_TIMEOUT = 240.0
@dataclass(frozen=True)
class OpsPaths:
    root: Path  # orchestration.data_root: relative data paths resolve here
    state: Path  # OPSFABRIC_STATE_DIR
    home: Path  # PREFECT_HOME of server and worker

    @property
    def churn_dir(self) -> Path:
        return self.root / "data" / "raw" / "churn"


@pytest.fixture(scope="session")
def ops_paths(tmp_path_factory) -> OpsPaths:
    base = tmp_path_factory.mktemp("operations")
    paths = OpsPaths(root=base / "root", state=base / "state", home=base / "prefect")
    for p in (paths.root, paths.state, paths.home):
        p.mkdir(parents=True)
    return paths


@pytest.fixture(scope="session")
def source_repo(tmp_path_factory):
    from deployments.source import GitSource

    url = snapshot_repo(tmp_path_factory.mktemp("source") / "opsfabric")
    return GitSource(url=url, ref="main", chosen_because="tests: a snapshot of the working tree")


@pytest.fixture(scope="session")
def prefect_server(ops_paths: OpsPaths):
    server = start_prefect_server(ops_paths.home)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ops_env(ops_paths: OpsPaths) -> dict[str, str]:
    return {
        "OPSFABRIC_STATE_DIR": str(ops_paths.state),
        "OPSFABRIC_ORCHESTRATION__DATA_ROOT": str(ops_paths.root),
        "OPSFABRIC_CONFIG": "configs/profiles/small.yaml",  # relative: read from the clone
        "OPSFABRIC_ORCHESTRATION__RETRAIN_VIA": "event",
        "OPSFABRIC_DATASET__BATCH_PATTERN": "incoming/*.parquet",
    }


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server: Server):
    """Point this process's Prefect client at the session's server."""
    with prefect_client_at(prefect_server.url):
        yield prefect_server.url


@pytest.fixture(scope="session")
def registered_deployments(prefect_api_url, source_repo, ops_env, ops_paths) -> dict[str, str]:
    from deployments.control_room import ensure_work_pool
    from deployments.definitions import DEPLOYMENTS
    from deployments.deploy import deploy_all
    from opsfabric.settings import load_settings

    ensure_work_pool(POOL)
    settings = load_settings(state_dir=ops_paths.state)
    ids = deploy_all(POOL, source=source_repo, env=ops_env, settings=settings)
    return {spec.name: deployment_id for spec, deployment_id in zip(DEPLOYMENTS, ids)}


@pytest.fixture(scope="session")
def prefect_worker(prefect_server: Server, registered_deployments, ops_paths: OpsPaths):
    work_dir = ops_paths.home / "worker"
    work_dir.mkdir(exist_ok=True)
    # The worker polls every few seconds by default; 2 s keeps the tests short.
    worker = start_worker(POOL, prefect_server.url, ops_paths.home, work_dir, {"PREFECT_WORKER_QUERY_SECONDS": "2"})
    yield worker
    worker.stop()


def wait_for_final_state(flow_run_id, timeout: float = RUN_TIMEOUT, worker: Server | None = None):
    """Poll the API until the flow run is final; the run, or a failure that shows the worker's log."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if worker is not None and not worker.alive():
                pytest.fail(f"worker died:\n{worker.tail()}")
            time.sleep(1.0)
    pytest.fail(f"flow run {flow_run_id} not finished after {timeout:.0f} s:\n{worker.tail() if worker else ''}")


@pytest.fixture(scope="session")
def run_deployment_once(prefect_worker: Server, registered_deployments):
    """Session-scoped form of ``run_and_wait`` (for module fixtures such as a trained champion)."""
    from prefect.deployments import run_deployment

    def runner(name: str, parameters: dict | None = None):
        started = run_deployment(name=name, parameters=parameters or {}, timeout=0)
        return wait_for_final_state(started.id, worker=prefect_worker)

    return runner


@pytest.fixture
def run_and_wait(prefect_worker: Server, registered_deployments):
    """``run_and_wait("train/train-on-demand", parameters)``: what the UI's Run button does, then wait."""
    from prefect.deployments import run_deployment

    def runner(name: str, parameters: dict | None = None):
        started = run_deployment(name=name, parameters=parameters or {}, timeout=0)
        return wait_for_final_state(started.id, worker=prefect_worker)

    return runner


def flow_run_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]


@pytest.fixture
def wait_final(prefect_worker: Server):
    """``wait_final(flow_run_id)``: the flow run once it is in a final state."""
    return lambda flow_run_id, timeout=RUN_TIMEOUT: wait_for_final_state(flow_run_id, timeout, prefect_worker)


@pytest.fixture
def run_logs():
    """``run_logs(flow_run_id, containing=None)``: the flow run's log messages in the API.

    Logs reach the API asynchronously, after the run's final state may: with ``containing``, wait
    (up to 30 s) until a message contains that text.
    """

    def read(flow_run_id, containing: str | None = None, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            messages = flow_run_logs(flow_run_id)
            if containing is None or any(containing in m for m in messages) or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)

    return read
