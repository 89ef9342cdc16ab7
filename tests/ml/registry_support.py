"""What the registry tests share: child-process entry points and the registry's consistency rules.

The entry points run in processes started with multiprocessing's ``spawn`` context (a fresh
interpreter, nothing inherited but the arguments), so a race is a race between processes and a
kill is a real SIGKILL of a process holding real locks and SQLite connections.

Crash windows are armed inside the child only: the child wraps the MLflow client method (or the
tracking function) that ends the window so that the process sends itself SIGKILL right after (or
before) the real call: no ``finally``, no roll back, no ``atexit``, as the OOM killer or a lost
machine would end it. Production code has no test hook.
"""

from __future__ import annotations

import os
import signal
import time
from functools import wraps
from pathlib import Path
from typing import Any, Callable

from opsfabric.ml.registry import DECISION_TAG, INTERRUPTED, PROMOTED, REJECTED, get_champion, model_versions

# Crash windows, in the order a training run and then a gate reach them.
CANDIDATE_RUN_OPEN = "candidate-run-open"  # the candidate's run has params, metrics and data, no model; still RUNNING
VERSION_CREATED = "version-created"  # the version exists (tagged promoting or rejected); alias not moved
ALIAS_MOVED = "alias-moved"  # the alias points at the new version, still tagged promoting
VERSION_CONFIRMED = "version-confirmed"  # version tagged promoted; its run not told yet


def list_versions(client: Any, name: str) -> list[str]:
    """All version numbers of a registered model (empty if it does not exist)."""
    return [ref.version for ref in model_versions(client, name)]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(owner: Any, name: str, action: Callable[[], None], when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Replace ``owner.name`` so that ``action`` runs right after each real call for which ``when`` holds."""
    real = getattr(owner, name)

    @wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if when(*args, **kwargs):
            action()
        return result

    setattr(owner, name, wrapper)


def _before(owner: Any, name: str, action: Callable[[], None]) -> None:
    real = getattr(owner, name)

    @wraps(real)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        action()
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def _confirms_promotion(client: Any, name: str, version: Any = None, key: Any = None, value: Any = None, **_: Any) -> bool:
    return key == DECISION_TAG and value == PROMOTED


def arm(point: str, action: Callable[[], None] = die) -> None:
    """Make this process run ``action`` (SIGKILL by default) at crash window ``point``."""
    from mlflow import MlflowClient

    from opsfabric import tracking

    if point == CANDIDATE_RUN_OPEN:  # training: everything logged but the model
        _before(tracking, "log_sklearn_model", action)
    elif point == VERSION_CREATED:
        _after(MlflowClient, "create_model_version", action)
    elif point == ALIAS_MOVED:
        _after(MlflowClient, "set_registered_model_alias", action)
    elif point == VERSION_CONFIRMED:
        _after(MlflowClient, "set_model_version_tag", action, when=_confirms_promotion)
    else:
        raise ValueError(f"unknown crash window {point!r}")


def wait_for(ready: Path, go: Path, timeout: float = 120) -> Callable[[], None]:
    """An action for :func:`arm`: create ``ready``, then wait until ``go`` exists."""

    def action() -> None:
        ready.touch()
        deadline = time.monotonic() + timeout
        while not go.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{go} never appeared")
            time.sleep(0.05)

    return action


def gate_in_child(args: dict[str, Any], results: Any) -> None:
    """Run the gate in this (child) process and put its outcome, or its named error, on ``results``.

    ``args``: settings, candidate, evaluation, spec, lineage; optional ``kill_at`` (a crash window:
    SIGKILL there), ``pause_at`` (``(window, ready, go)``: create the file ``ready`` there and wait
    for ``go``), ``barrier`` (wait on it after the first judgement, so racing children judge before
    either applies) and ``max_attempts``.
    """
    from opsfabric.errors import OpsFabricError
    from opsfabric.ml import promotion

    if args.get("kill_at"):
        arm(args["kill_at"])
    if args.get("pause_at"):
        point, ready, go = args["pause_at"]
        arm(point, wait_for(Path(ready), Path(go)))
    barrier = args.get("barrier")
    judged: list[Any] = []

    def on_judged(judgement: Any) -> None:
        judged.append(judgement.champion_version)
        if barrier is not None and len(judged) == 1:
            barrier.wait(timeout=120)

    try:
        outcome = promotion.gate_and_register(
            args["settings"],
            args["candidate"],
            args["evaluation"],
            args["spec"],
            lineage=args["lineage"],
            max_attempts=args.get("max_attempts", promotion.MAX_ATTEMPTS),
            on_judged=on_judged,
        )
    except OpsFabricError as exc:
        results.put({"pid": os.getpid(), "error": type(exc).__name__, "message": str(exc), "judged": judged})
        return
    results.put({"pid": os.getpid(), "summary": outcome.summary(), "judged": judged})


def train_in_child(args: dict[str, Any], results: Any) -> None:
    """Train and log a candidate in this (child) process; optional ``kill_at`` as in :func:`gate_in_child`."""
    from opsfabric.ml import training

    if args.get("kill_at"):
        arm(args["kill_at"])
    candidate = training.train_and_log(args["settings"], args["sets"], args["contract"], lineage=args["lineage"], run_name=args["run_name"])
    results.put({"pid": os.getpid(), "run_id": candidate.run_id})


def registry_problems(client: Any, name: str, alias: str) -> list[str]:
    """Every way registry, alias and run tags disagree (empty: consistent).

    * every version carries a final decision: promoted, rejected or interrupted (never promoting);
    * the promoted versions form one chain, each replacing the one before (its
      ``gate.previous_champion``), and the last of them is the champion;
    * the run of each version, where its gate record is about this version, carries the same
      decision; the newest version's run carries its record.
    """
    versions = model_versions(client, name)
    champion = get_champion(client, name, alias)
    problems = []
    for ref in versions:
        if ref.decision not in {PROMOTED, REJECTED, INTERRUPTED}:
            problems.append(f"version {ref.version} has decision {ref.decision!r}")
    promoted = [ref for ref in versions if ref.decision == PROMOTED]
    previous = "none"
    for ref in promoted:
        if ref.tags.get("gate.previous_champion") != previous:
            problems.append(f"promoted version {ref.version} replaced {ref.tags.get('gate.previous_champion')!r}, not {previous!r}")
        previous = ref.version
    champion_version = champion.version if champion else None
    if (promoted[-1].version if promoted else None) != champion_version:
        problems.append(f"champion is {champion_version!r} but the last promoted version is {promoted[-1].version if promoted else None!r}")
    for ref in versions:
        tags = client.get_run(ref.run_id).data.tags
        about_this = tags.get("gate.registered_model") == name and tags.get("gate.version") == ref.version
        if about_this and tags.get("gate.decision") != ref.decision:
            problems.append(f"version {ref.version} is {ref.decision!r} but its run says {tags.get('gate.decision')!r}")
        if ref is versions[-1] and not about_this:
            problems.append(f"the newest version {ref.version}'s run {ref.run_id} has no gate record for it")
    return problems
