"""The scaled-out stack for real: two deployments run by a Prefect worker switched to it by configuration alone.

PostgreSQL 15, Redis, S3 (moto), an MLflow server (PostgreSQL + S3), a Prefect server (PostgreSQL +
Redis via prefect-redis) and a Dask scheduler with two workers are started once for the module.
Every deployment is registered with a process work pool (``deployments.deploy.deploy_all``); a
worker whose environment names ``configs/profiles/server.yaml`` (plus endpoints, a small-data
profile and a data folder) runs the ML pipeline and the agent regression suite. The tests then
read each system directly: MLflow's API, the S3 bucket, Prefect's PostgreSQL tables, Redis, the
Dask workers' process ids, and look for the database password wherever it could have leaked.

Not covered: a Qdrant server (none is installable here; ``rag.store`` stays in local mode), and
the RAG pipeline (it writes the local Qdrant folder, which one process at a time may open).
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from opsfabric.settings import PROJECT_ROOT
from tests.scaled.stack import ScaledStack, live_processes, s3_client, start_stack
from tests.servers import prefect_client_at, snapshot_repo, start_worker

pytestmark = [pytest.mark.scaled, pytest.mark.server]

POOL = "opsfabric-scaled"
ML_DEPLOYMENT = "ml-pipeline/ml-pipeline-weekly"
AGENT_DEPLOYMENT = "agent-regression/agent-regression-nightly"
RUN_TIMEOUT = 420.0  # a guard against a hung run, not a performance assertion


@contextmanager
def prefect_api(stack: ScaledStack):
    """This test process's Prefect client settings pointed at the stack's server (its workers flushed on exit)."""
    with prefect_client_at(stack.prefect.url):
        yield


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("scaled")
    started = start_stack(home)
    yield started
    leftovers = started.stop()
    assert not leftovers, "processes left after teardown:\n" + "\n".join(leftovers)


def worker_environment(stack: ScaledStack, home: Path) -> dict[str, str]:
    """What switches a worker (and the flow runs it starts) to the scaled stack: configuration only.

    Profiles by absolute path: a deployment pulled from git runs in a clone, where relative names
    would resolve against the clone. The third overlay only moves the dataset into this test's
    folder (the flow generates it there, small, from ``configs/profiles/small.yaml``).
    """
    data = home / "churn"
    dataset = yaml.safe_load((PROJECT_ROOT / "configs/base.yaml").read_text())["dataset"]
    dataset.update(data_dir=str(data), reference=str(data / "reference.parquet"),
                   batches=[str(data / f"batch_0{i}.parquet") for i in range(1, 5)])
    overlay = home / "scaled-data.yaml"
    overlay.write_text(yaml.safe_dump({"dataset": dataset}))
    profiles = [PROJECT_ROOT / "configs/profiles/server.yaml", PROJECT_ROOT / "configs/profiles/small.yaml", overlay]
    return {
        "OPSFABRIC_CONFIG": ",".join(map(str, profiles)),
        "OPSFABRIC_TRACKING__URI": stack.mlflow.url,
        "OPSFABRIC_ORCHESTRATION__DASK_ADDRESS": stack.dask.address,
        "OPSFABRIC_STATE_DIR": str(home / "state"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # default 10 s between polls of the work pool
    }


@pytest.fixture(scope="module")
def runs(stack, tmp_path_factory):
    """Register the deployments, start a worker, run both deployments through it; the final flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment

    from deployments.deploy import deploy_all
    from deployments.source import GitSource

    home = tmp_path_factory.mktemp("scaled-worker")
    with prefect_api(stack):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        # what `python -m deployments.deploy` does: the deployments carry no environment, so the
        # worker's environment alone switches the runs to the scaled stack
        source = GitSource(url=snapshot_repo(tmp_path_factory.mktemp("source") / "opsfabric"), ref="main",
                           chosen_because="tests: a snapshot of the working tree")
        deploy_all(POOL, source=source)
        env = worker_environment(stack, home)
        worker = start_worker(POOL, stack.prefect.url, home / "prefect-home", PROJECT_ROOT, env)
        stack.extra.append(worker)
        started = {name: run_deployment(name, timeout=0) for name in (ML_DEPLOYMENT, AGENT_DEPLOYMENT)}
        final = wait_for_final_states(started, worker)
    return {"ml": final[ML_DEPLOYMENT], "agent": final[AGENT_DEPLOYMENT], "state_dir": Path(env["OPSFABRIC_STATE_DIR"])}


def wait_for_final_states(started: dict, worker) -> dict:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + RUN_TIMEOUT
    with get_client(sync_client=True) as client:
        while True:
            current = {name: client.read_flow_run(run.id) for name, run in started.items()}
            if all(run.state and run.state.is_final() for run in current.values()):
                return current
            if time.monotonic() > deadline or not worker.alive():
                states = {name: run.state_name for name, run in current.items()}
                pytest.fail(f"flow runs not finished ({states}); worker log:\n{worker.tail(80)}")
            time.sleep(1)


def flow_run_logs(stack: ScaledStack, flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with prefect_api(stack), get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
        messages = [log.message for log in logs]
        offset = len(logs)
        while len(logs) == 200:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=offset)
            messages += [log.message for log in logs]
            offset += len(logs)
    return messages


def mlflow(stack: ScaledStack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow.url, registry_uri=stack.mlflow.url)


# ------------------------------------------------------------------------------------------------
def test_both_deployments_complete_through_the_work_pool_worker(runs):
    for key in ("ml", "agent"):
        run = runs[key]
        assert run.state.is_completed(), f"{key}: {run.state_name}: {run.state.message}"
        assert run.work_pool_name == POOL and run.deployment_id is not None


def test_mlflow_server_holds_the_runs_and_the_champion(stack, runs):
    client = mlflow(stack)
    champion = client.get_model_version_by_alias("churn-classifier", "champion")
    training = client.get_run(champion.run_id)
    assert training.data.tags["prefect.flow_run_id"] == str(runs["ml"].id)
    assert {"eval_roc_auc", "eval_f1"} <= set(training.data.metrics)

    [suite] = client.search_runs(
        [client.get_experiment_by_name("opsfabric-agent-regression").experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{runs['agent'].id}'",
    )
    assert suite.info.status == "FINISHED" and "pass_rate" in " ".join(suite.data.metrics)


def test_artifacts_are_in_the_s3_bucket_not_on_local_disk(stack, runs):
    client = mlflow(stack)
    champion = client.get_model_version_by_alias("churn-classifier", "champion")
    # the version's source is the logged model (models:/m-<id>); its artifacts live at the model's location
    assert champion.source.startswith("models:/m-"), champion.source
    location = client.get_logged_model(champion.model_id or champion.source.removeprefix("models:/")).artifact_location
    # mlflow-artifacts:/<path> is served by the tracking server from --artifacts-destination s3://bucket/mlflow
    assert location.startswith("mlflow-artifacts:"), location
    prefix = "mlflow/" + re.sub(r"^mlflow-artifacts:(//[^/]*)?/", "", location).strip("/") + "/"
    keys = {o["Key"] for o in s3_client(stack.s3.url).list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", [])}
    assert {prefix + "MLmodel", prefix + "model.pkl"} <= keys, sorted(keys)
    assert not (runs["state_dir"] / "mlflow" / "artifacts").exists()


def test_prefect_server_keeps_its_state_in_postgresql_and_redis(stack, runs):
    import redis

    ids = {str(runs["ml"].id): "ml-pipeline", str(runs["agent"].id): "agent-regression"}
    with stack.postgres.connect("prefect") as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT fr.id::text, f.name, fr.state_type FROM flow_run fr JOIN flow f ON f.id = fr.flow_id WHERE fr.id::text = ANY(%s)",
            (list(ids),),
        )
        rows = {row[0]: (row[1], row[2]) for row in cur.fetchall()}
        cur.execute("SELECT count(*) FROM task_run WHERE flow_run_id::text = %s", (str(runs["ml"].id),))
        [ml_tasks] = cur.fetchone()
        cur.execute("SELECT name FROM concurrency_limit_v2")
        limits = {row[0] for row in cur.fetchall()}
    assert rows == {i: (name, "COMPLETED") for i, name in ids.items()}
    assert ml_tasks > 10
    # orchestration.lock kind=prefect in the server profile: registry writes took a global concurrency limit
    assert any(name.startswith("opsfabric-") for name in limits), limits
    # events went through Redis streams (prefect_redis.messaging), not the in-memory broker
    events = redis.Redis.from_url(stack.redis.url)
    assert events.type("events") == b"stream" and events.xlen("events") > 0


def test_tasks_ran_on_the_dask_workers(stack, runs):
    from distributed import Client

    messages = flow_run_logs(stack, runs["ml"].id)
    where = [re.fullmatch(r"validated (\S+) on (dask worker tcp://\S+ \(pid (\d+)\)|process (\d+))", m)
             for m in messages if m.startswith("validated ")]
    on_dask = {m.group(1): int(m.group(3)) for m in where if m and m.group(3)}
    # the validation stage maps validate-file over all five files: every one ran in a Dask worker process
    # (monitoring later validates each batch again inside its own task group, in the flow's process)
    assert set(on_dask) == {"reference.parquet", *(f"batch_0{i}.parquet" for i in range(1, 5))}, messages
    assert set(on_dask.values()) <= stack.dask.worker_pids()
    with Client(stack.dask.address, timeout=30) as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    print("task prefixes seen by the Dask scheduler:", prefixes)
    assert any(p.startswith("validate-file") or p.startswith("validate_file") for p in prefixes), prefixes


def test_database_password_is_not_in_mlflow_or_prefect_logs(stack, runs):
    secret = stack.postgres.password  # "pw" + 24 random hex digits: found only where it was copied
    # both servers got it: their database URIs carry it (in their environment, not their command line)
    assert secret in stack.postgres.url("mlflow") and runs["ml"].state.is_completed()
    leaks: list[str] = [f"command line of process {p}" for p in live_processes(stack.process_groups) if secret in p]
    client = mlflow(stack)
    for experiment in client.search_experiments():
        leaks += [f"experiment {experiment.name} tag {k}" for k, v in experiment.tags.items() if secret in v]
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            where = f"run {run.info.run_id} ({experiment.name})"
            leaks += [f"{where} param {k}" for k, v in run.data.params.items() if secret in v]
            leaks += [f"{where} tag {k}" for k, v in run.data.tags.items() if secret in v]
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name = '{model.name}'"):
            leaks += [f"model {model.name} v{version.version} tag {k}" for k, v in version.tags.items() if secret in v]
    s3 = s3_client(stack.s3.url)
    objects = s3.list_objects_v2(Bucket=stack.bucket).get("Contents", [])
    assert objects
    for obj in objects:  # every artifact MLflow stored, read whole
        if secret.encode() in s3.get_object(Bucket=stack.bucket, Key=obj["Key"])["Body"].read():
            leaks.append(f"S3 artifact {obj['Key']}")
    for key in ("ml", "agent"):
        messages = flow_run_logs(stack, runs[key].id)
        assert messages
        leaks += [f"Prefect log of the {key} flow run: {m[:200]}" for m in messages if secret in m]
    assert not leaks, "the PostgreSQL password appears in:\n" + "\n".join(leaks)
