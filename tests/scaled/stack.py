"""The scaled-out stack, started for real as child processes on free loopback ports.

PostgreSQL 15 (one throwaway cluster, databases ``mlflow`` and ``prefect``, a user with a password),
Redis, S3 (``moto_server``), an MLflow server (PostgreSQL backend, artifacts proxied to S3), a
Prefect server (PostgreSQL + Redis through ``prefect-redis``) and a Dask scheduler with workers.
Built on :mod:`tests.servers` (``spawn``, ``free_port``, ``wait_http``, ``Server``); every
``start_*`` returns something with ``stop()``, and :class:`ScaledStack` stops them all in reverse
order and reports any process left behind.

Used by ``tests/scaled/test_scaled_stack.py``; ``docs/scaled_out.md`` shows the same commands by hand.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from opsfabric.settings import PROJECT_ROOT
from tests.servers import VENV_BIN, Server, free_port, spawn, start_prefect_server, wait_http, wait_until

PG_BIN = Path(os.environ.get("OPSFABRIC_PG_BIN", "/usr/lib/postgresql/15/bin"))
# moto accepts any credentials; MLflow's server (not its clients: artifacts are proxied) uses them.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run the command as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


# ---- PostgreSQL -----------------------------------------------------------------------------------
@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster; ``user``/``password`` own the databases it was created with."""

    server: Server
    root: Path
    port: int
    user: str
    password: str

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL: ``postgresql+psycopg2`` for MLflow, ``postgresql+asyncpg`` for Prefect.

        The driver is explicit: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is
        not installed (``psycopg2-binary`` is).
        """
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=database)

    def stop(self) -> None:
        if self.server.alive():
            # immediate: a throwaway cluster needs no shutdown checkpoint (a plain SIGTERM is PostgreSQL's
            # "smart" mode, which waits for every client to leave)
            subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "stop", "-m", "immediate", "-w", "-t", "20"]),
                           capture_output=True, timeout=30)
        self.server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(databases: tuple[str, ...] = ("mlflow", "prefect"), user: str = "opsfabric", timeout: float = 60.0) -> Postgres:
    """initdb + postgres in the foreground (its own process group) on a free port; create ``user`` and ``databases``.

    The cluster lives in its own ``/tmp/opsfabric-pg-*`` folder owned by ``postgres``: pytest's
    temporary folders are private to root, and PostgreSQL must own its data folder.
    """
    import psycopg2

    root = Path(tempfile.mkdtemp(prefix="opsfabric-pg-"))
    root.chmod(0o755)
    superuser_password = secrets.token_hex(12)
    password = "pw" + secrets.token_hex(12)  # unique, so a leak of it anywhere can be searched for
    (root / "pwfile").write_text(superuser_password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pwfile", "postgres", "postgres")
    initdb = subprocess.run(
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", f"--pwfile={root / 'pwfile'}",
                      "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"]),
        capture_output=True, text=True, timeout=120,
    )
    if initdb.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
    port = free_port()
    log = root / "postgres.log"
    log.touch()
    if os.geteuid() == 0:
        shutil.chown(log, "postgres", "postgres")
    process = spawn(
        "postgres",
        _as_postgres([str(PG_BIN / "postgres"), "-D", str(root / "data"), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                      "-k", str(root), "-c", "fsync=off", "-c", "max_connections=200"]),
        log,
    )
    server = Server("postgres", process, log, url=f"postgresql://127.0.0.1:{port}")

    def superuser():
        return psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=superuser_password, dbname="postgres")

    wait_until(lambda: superuser().close() is None, server, timeout, "connections")
    conn = superuser()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {user} WITH LOGIN PASSWORD %s", (password,))
        for database in databases:
            cur.execute(f"CREATE DATABASE {database} OWNER {user}")
    conn.close()
    return Postgres(server, root, port, user, password)


# ---- Redis, S3 ------------------------------------------------------------------------------------
def start_redis(home: Path, timeout: float = 30.0) -> Server:
    """``redis-server`` on a free port, nothing persisted; ``url`` is ``redis://127.0.0.1:<port>``."""
    import redis

    port = free_port()
    argv = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(home)]
    home.mkdir(parents=True, exist_ok=True)
    server = Server("redis", spawn("redis", argv, home / "redis.log"), home / "redis.log", url=f"redis://127.0.0.1:{port}")
    wait_until(lambda: redis.Redis(port=port, socket_timeout=2).ping(), server, timeout, "PING")
    return server


def start_s3(home: Path, bucket: str, timeout: float = 60.0) -> Server:
    """``moto_server`` (an S3 API in memory) on a free port, with ``bucket`` created."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = spawn("moto_server", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], home / "moto.log")
    server = Server("moto_server", process, home / "moto.log", url=url, env={"MLFLOW_S3_ENDPOINT_URL": url, **S3_CREDENTIALS})
    wait_http(f"{url}/moto-api/", server, timeout)
    s3_client(url).create_bucket(Bucket=bucket)
    return server


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])


# ---- MLflow, Prefect ------------------------------------------------------------------------------
def spawn_mlflow_server(home: Path, backend_uri: str, artifacts_destination: str, s3_endpoint: str) -> Server:
    """``mlflow server`` on PostgreSQL with artifacts proxied to S3 (clients need no S3 credentials).

    Not waited for: call :func:`wait_mlflow` (it migrates its schema on first start, which can
    overlap with the Prefect server's start).
    """
    port = free_port()
    env = {
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **S3_CREDENTIALS, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
        # MLflow 3.17 starts 7 huey job consumers (GenAI evaluation jobs) by default: nothing here uses them,
        # and on 2 cores they compete with the flows; they also made the server take 10 s to stop.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    # the URI (with the database password) goes in the environment, not the command line that `ps` shows
    env["MLFLOW_BACKEND_STORE_URI"] = backend_uri
    argv = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--artifacts-destination", artifacts_destination]
    home.mkdir(parents=True, exist_ok=True)
    process = spawn("mlflow server", argv, home / "mlflow.log", env, cwd=home)
    return Server("mlflow server", process, home / "mlflow.log", url=f"http://127.0.0.1:{port}")


def wait_mlflow(server: Server, timeout: float = 180.0) -> None:
    wait_http(f"{server.url}/health", server, timeout)


def prefect_server_env(database_url: str, redis_url: str) -> dict[str, str]:
    """Environment of a Prefect server on PostgreSQL whose messaging, cache, causal ordering,
    concurrency leases and docket live in Redis (``prefect-redis``): what several API replicas need.

    Names checked in the installed source: ``prefect/settings/models/server/{database,events,
    concurrency,docket}.py``, ``prefect_redis/client.py`` and ``prefect/cli/_server_utils.py``.
    """
    from urllib.parse import urlparse

    redis = urlparse(redis_url)
    return {
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": redis.hostname or "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(redis.port or 6379),
        "PREFECT_REDIS_MESSAGING_DB": "0",
        "PREFECT_SERVER_DOCKET_URL": f"redis://{redis.hostname}:{redis.port}/1",
    }


# ---- Dask -----------------------------------------------------------------------------------------
@dataclass
class DaskCluster:
    scheduler: Server
    workers: Server
    address: str

    def worker_pids(self) -> set[int]:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            return set(client.run(os.getpid).values())  # asks each worker process itself

    def stop(self) -> None:
        self.workers.stop()
        self.scheduler.stop()


def start_dask(home: Path, n_workers: int = 2, env: dict[str, str] | None = None, timeout: float = 90.0) -> DaskCluster:
    """``dask scheduler`` + ``dask worker --nworkers N`` (one thread each, project on PYTHONPATH).

    Scheduler and workers run the project's environment, like the containers of a real deployment
    that run the project's image (distributed 2026.8 unpickles task graphs on the scheduler too):
    the project root is on their ``PYTHONPATH``, so they import the flow modules (``flows.<name>``,
    the deployments' module-path entrypoints) like the worker does.
    """
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    home.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]))
    dask_env = {"PYTHONPATH": pythonpath, **(env or {})}
    scheduler = Server(
        "dask scheduler",
        spawn("dask scheduler", [str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
              home / "scheduler.log", dask_env, cwd=PROJECT_ROOT),
        home / "scheduler.log",
        url=address,
    )
    workers = Server(
        "dask workers",
        spawn("dask worker", [str(VENV_BIN / "dask"), "worker", address, "--nworkers", str(n_workers), "--nthreads", "1",
                              "--no-dashboard", "--memory-limit", "0", "--local-directory", str(home / "work")],
              home / "workers.log", dask_env, cwd=PROJECT_ROOT),
        home / "workers.log",
        url=address,
    )

    def ready() -> bool:
        with Client(address, timeout=5) as client:
            client.wait_for_workers(n_workers, timeout=5)
        return True

    try:
        wait_until(ready, workers, timeout, f"{n_workers} workers")
    except RuntimeError:
        scheduler.stop()
        raise
    return DaskCluster(scheduler, workers, address)


# ---- the whole stack ------------------------------------------------------------------------------
@dataclass
class ScaledStack:
    postgres: Postgres
    redis: Server
    s3: Server
    bucket: str
    mlflow: Server
    prefect: Server
    dask: DaskCluster
    extra: list[Server] = field(default_factory=list)  # workers added by the caller, stopped first

    @property
    def process_groups(self) -> set[int]:
        servers = [*self.extra, self.dask.workers, self.dask.scheduler, self.prefect, self.mlflow, self.s3, self.redis, self.postgres.server]
        return {s.process.pid for s in servers}

    def stop(self) -> list[str]:
        """Stop everything, newest first; return the processes still alive afterwards (should be none)."""
        groups = self.process_groups
        stoppers = [*((s.name, s.stop) for s in self.extra), ("dask", self.dask.stop), ("prefect server", self.prefect.stop),
                    ("mlflow server", self.mlflow.stop), ("moto_server", self.s3.stop), ("redis", self.redis.stop),
                    ("postgres", self.postgres.stop)]
        for name, stopper in stoppers:
            started = time.monotonic()
            try:
                stopper()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others; the leftovers check reports it
                print(f"stopping {name} failed: {exc}")
            print(f"stopped {name} in {time.monotonic() - started:.1f} s")
        return live_processes(groups, markers=[str(self.postgres.root)])


def live_processes(groups: set[int], markers: list[str] = ()) -> list[str]:
    """``pid cmdline`` of live processes in one of ``groups`` or whose command line names a marker (``ps``'s view)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgid = fields[0], int(fields[2])
        if state == "Z":
            continue
        if pgid in groups or any(m in cmdline for m in markers):
            found.append(f"{entry.name} {cmdline}")
    return found


def start_stack(home: Path, bucket: str = "opsfabric-artifacts") -> ScaledStack:
    """Start every server of the scaled-out stack; on a failure, stop the ones already started."""
    started: list[Callable[[], None]] = []
    try:
        postgres = start_postgres()
        started.append(postgres.stop)
        redis = start_redis(home / "redis")
        started.append(redis.stop)
        s3 = start_s3(home / "s3", bucket)
        started.append(s3.stop)
        mlflow = spawn_mlflow_server(home / "mlflow", postgres.url("mlflow"), f"s3://{bucket}/mlflow", s3.url)
        started.append(mlflow.stop)
        prefect = start_prefect_server(home / "prefect-server", prefect_server_env(postgres.url("prefect", "postgresql+asyncpg"), redis.url))
        started.append(prefect.stop)
        dask = start_dask(home / "dask")
        started.append(dask.stop)
        wait_mlflow(mlflow)
    except BaseException:
        for stop in reversed(started):
            stop()
        raise
    return ScaledStack(postgres, redis, s3, bucket, mlflow, prefect, dask)
