"""What the registry tests share: child-process entry points and the registry's consistency rules.

The entry points run in processes started with multiprocessing's ``spawn`` context (a fresh
interpreter, nothing inherited but the arguments), so a race is a race between processes and a
kill is a real SIGKILL of a process holding real locks and SQLite connections.
"""

from __future__ import annotations

import os
from typing import Any

from opsfabric.ml.registry import INTERRUPTED, PROMOTED, REJECTED, get_champion, model_versions


def gate_in_child(args: dict[str, Any], results: Any) -> None:
    """Run the gate in this (child) process and put its outcome, or its named error, on ``results``.

    ``args``: settings, candidate, evaluation, spec, lineage; optional ``kill_at`` (a kill point),
    ``barrier`` (wait on it after the first judgement, so racing children judge before either
    applies) and ``max_attempts``.
    """
    from opsfabric.errors import OpsFabricError
    from opsfabric.ml import kill_points, promotion

    if args.get("kill_at"):
        os.environ[kill_points.ENV] = args["kill_at"]
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
    from opsfabric.ml import kill_points, training

    if args.get("kill_at"):
        os.environ[kill_points.ENV] = args["kill_at"]
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
