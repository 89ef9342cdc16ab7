"""Is the server there? One bounded check before a job writes anything, with an error that names it.

A flow pointed at an MLflow or Prefect server that is down would otherwise hang in the clients'
own retry loops (MLflow: 7 retries with back-off, minutes) and end in a connection traceback,
possibly after local work was done. ``check_mlflow`` runs when a flow starts (``flows.runners.
flow_settings``, before the flow writes anything) and where the store is first opened;
``check_prefect`` when a command line fails to reach the Prefect API. Both use the retry policy of the
configuration (``servers.connect_attempts``, ``servers.connect_backoff_seconds``), and raise
:class:`ServerUnreachableError` naming the URL (password masked), the attempts made and the
setting to change.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from opsfabric.errors import OpsFabricError


class ServerUnreachableError(OpsFabricError):
    """A configured server (MLflow, Prefect) did not answer its health check."""


def redact_uri(uri: str) -> str:
    """``uri`` with any password in it replaced by ``***`` (``postgresql://u:***@host/db``)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def check_http(name: str, base_url: str, health_path: str, *, attempts: int, backoff_seconds: float,
               timeout_seconds: float, setting: str) -> None:
    """GET ``base_url + health_path`` until it answers 2xx, at most ``attempts`` times.

    Raises:
        ServerUnreachableError: no answer; the message names the server, its URL and the policy.
    """
    url = base_url.rstrip("/") + health_path
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
                if 200 <= response.status < 300:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if attempt < attempts:
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
    raise ServerUnreachableError(
        f"{name} at {redact_uri(base_url)} is unreachable: {last} "
        f"({attempts} attempts, back-off {backoff_seconds:g} s doubling, {timeout_seconds:g} s timeout each; "
        "servers.connect_attempts / servers.connect_backoff_seconds)",
        hint=f"start the server, or point {setting} at one that runs",
    )


def check_mlflow(settings) -> None:
    """The MLflow tracking server of ``settings`` answers, when it is a server (SQLite needs no check)."""
    uri = settings.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    policy = settings.servers
    check_http("MLflow tracking server", uri, "/health", attempts=policy.connect_attempts,
               backoff_seconds=policy.connect_backoff_seconds, timeout_seconds=policy.connect_timeout_seconds,
               setting="tracking.uri (OPSFABRIC_TRACKING__URI)")
    # MLflow's own client retries each request 7 times with back-off (minutes) when a server goes
    # away mid-run; bound it by the same policy unless the user chose otherwise
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(policy.connect_attempts))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(policy.connect_timeout_seconds * 4, 10))))


def check_prefect(settings) -> None:
    """The Prefect API of this process answers, when one is configured (the ephemeral API needs no check)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    policy = settings.servers
    check_http("Prefect API", url, "/health", attempts=policy.connect_attempts,
               backoff_seconds=policy.connect_backoff_seconds, timeout_seconds=policy.connect_timeout_seconds,
               setting="PREFECT_API_URL")
