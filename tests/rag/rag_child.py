"""One RAG operation in a process of its own, for the race and crash tests.

    python -m tests.rag.rag_child OPERATION OVERLAY [--collection C] [--die-at POINT] [--ready FILE --go FILE]

Operations (the same plain functions the flows call):

* ``build``: ingest the corpus, then record the version's MLflow run;
* ``gate``: evaluate ``--collection`` against the live version, apply the verdict, one MLflow run per verdict;
* ``rollback``: move the alias back;
* ``claim``: claim the next build (registry entry, owner, lease), release the index lock, and sleep
  until killed: a build that is "running" somewhere else.

``--die-at POINT`` sends SIGKILL to this process at POINT (no exception handler, no ``atexit``, no
flush: a real crash); see :data:`DIE_POINTS`. ``--ready/--go`` is a barrier: the process creates
READY and waits for GO before building, or before applying its first gate verdict. The result is
printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from functools import partial, wraps
from pathlib import Path

from opsfabric.runtime_env import configure_runtime_env

configure_runtime_env()

from opsfabric.rag import ingest, operations, promotion, qdrant, records, versions  # noqa: E402
from opsfabric.rag.settings import RagConfig  # noqa: E402
from opsfabric.settings import load_settings  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_after(owner, name: str, when=lambda result: True) -> None:
    real = getattr(owner, name)

    @wraps(real)
    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(result):
            die()
        return result

    setattr(owner, name, wrapper)


def die_before(owner, name: str) -> None:
    @wraps(getattr(owner, name))
    def wrapper(*args, **kwargs):
        die()

    setattr(owner, name, wrapper)


DIE_POINTS = {
    # the registry says "building" (owner, lease), nothing is in Qdrant yet
    "after-claim": lambda: die_after(versions, "claim_build", lambda claim: claim.kind != "unchanged"),
    # the base version's points are copied and on disk, the registry does not say so yet
    "after-copy": lambda: die_before(versions.BuildLease, "mark_copied"),
    # points and docstore are written, the registry still says "building"
    "before-built": lambda: die_before(versions.BuildLease, "finish"),
    # the alias moved (promotion or rollback), the registry is not saved
    "after-alias-move": lambda: die_after(qdrant, "move_alias"),
}


def wait_at_barrier(ready: Path, go: Path) -> None:
    ready.touch()
    deadline = time.monotonic() + 600
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go} never appeared")
        time.sleep(0.05)


def pause_before_first_apply(ready: Path, go: Path) -> None:
    real = promotion.apply_verdict
    calls = []

    @wraps(real)
    def wrapper(*args, **kwargs):
        if not calls:
            wait_at_barrier(ready, go)
        calls.append(1)
        return real(*args, **kwargs)

    promotion.apply_verdict = wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("operation", choices=["build", "gate", "rollback", "claim"])
    parser.add_argument("overlay")
    parser.add_argument("--collection")
    parser.add_argument("--die-at", choices=sorted(DIE_POINTS))
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--go", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    config = RagConfig(load_settings(args.overlay))
    if args.die_at:
        DIE_POINTS[args.die_at]()

    if args.operation == "build":
        from opsfabric.rag.embeddings import configured_embedding

        embed_model = configured_embedding(config)
        embed_model.get_text_embedding("warm-up")  # model loading stays out of the race
        if args.ready:
            wait_at_barrier(args.ready, args.go)
        report = ingest.ingest_corpus(config, embed_model, show_progress=False)
        run_id = records.log_index_version(config, report, records.rag_lineage(config, report.corpus_hash))
        result = report.summary() | {"mlflow_run_id": run_id, "resumed_because": report.resumed_because}
    elif args.operation == "gate":
        if args.ready:
            pause_before_first_apply(args.ready, args.go)
        record = partial(records.evaluation_run, config, args.collection, records.rag_lineage(config))
        result = promotion.gate_version(config, args.collection, record=record).summary()
    elif args.operation == "rollback":
        result = operations.rollback_index(config)
    else:
        with versions.index_session(config, "claim a build for the test") as client:
            claim = versions.claim_build(config, client, "corpus-of-the-claiming-process")
        result = {"collection": claim.version.collection, "pid": os.getpid()}
        print(json.dumps(result), flush=True)
        args.ready.touch()
        while True:
            time.sleep(1)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
