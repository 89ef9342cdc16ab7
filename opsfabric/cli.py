"""Command lines print a named error as its message and what to do, not as a traceback.

Every ``python -m flows.<name>`` entry point runs through :func:`run_command`:

* an :class:`~opsfabric.errors.OpsFabricError` (a configuration typo, a bad data file, a stale
  decision, a held lock, an unknown thread...) prints ``error: <message>`` and ``hint: <what to do>``
  on stderr and exits with status 2; Prefect's own log lines for that failure keep their message
  but drop the traceback;
* ``--traceback`` (or ``OPSFABRIC_TRACEBACK=1``) shows the full traceback instead;
* any other exception is a bug and keeps its traceback.

``--config FILE`` (repeatable) is put into ``OPSFABRIC_CONFIG`` before a flow module is imported,
so the files decide everything the configuration decides, the task runner included.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence

from opsfabric.errors import OpsFabricError

TRACEBACK_ENV = "OPSFABRIC_TRACEBACK"
EXIT_NAMED_ERROR = 2


def pop_global_options(argv: Sequence[str]) -> tuple[list[str], list[str], bool]:
    """Split ``--config FILE`` (repeatable) and ``--traceback`` out of ``argv``.

    Returns:
        (remaining arguments, config files, traceback wanted)
    """
    rest: list[str] = []
    configs: list[str] = []
    traceback = os.environ.get(TRACEBACK_ENV, "") not in {"", "0", "false"}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--traceback":
            traceback = True
        elif arg == "--config":
            if not args:
                raise SystemExit("error: --config needs a file name")
            configs.append(args.pop(0))
        elif arg.startswith("--config="):
            configs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, configs, traceback


def run_command(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Run ``main(args)`` as a command line: named errors become a message and exit status 2.

    Args:
        main: the command; receives the arguments left after the global options. Import flow
            modules inside it, so ``--config`` files are in ``OPSFABRIC_CONFIG`` first.
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: what ``main`` returned (0 for None), or 2 after a named error.
    """
    args, configs, traceback = pop_global_options(sys.argv[1:] if argv is None else argv)
    if configs:
        existing = [c for c in os.environ.get("OPSFABRIC_CONFIG", "").split(",") if c.strip()]
        os.environ["OPSFABRIC_CONFIG"] = ",".join(existing + configs)
    if not traceback:
        _quiet_named_error_tracebacks()
    try:
        status = main(args)
    except OpsFabricError as exc:
        if traceback:
            raise
        print(format_error(exc), file=sys.stderr)
        return EXIT_NAMED_ERROR
    except Exception as exc:
        named = None if traceback else unreachable_prefect_api(exc)
        if named is None:
            raise
        print(format_error(named), file=sys.stderr)
        return EXIT_NAMED_ERROR
    return int(status or 0)


def unreachable_prefect_api(exc: BaseException) -> OpsFabricError | None:
    """A named error when ``exc`` came from a configured Prefect API that does not answer, else None.

    Prefect's client fails with ``RuntimeError: Failed to reach API at ...`` or an httpx connection
    error (before a flow run exists when the server is down from the start); the health check (with the configured
    retry policy) confirms the server is down rather than guessing from the message.
    """
    import httpx

    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if not any(isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)) or "Failed to reach API" in str(e) for e in chain):
        return None
    from opsfabric.preflight import ServerUnreachableError, check_prefect
    from opsfabric.settings import load_settings

    try:
        check_prefect(load_settings())
    except ServerUnreachableError as named:
        return named
    return None


def format_error(exc: OpsFabricError) -> str:
    """``error: <message>`` and, when the error has one, ``hint: <what to do>``."""
    lines = [f"error: {exc}"]
    if exc.hint:
        lines.append(f"hint: {exc.hint}")
    lines.append(f"(run again with --traceback or {TRACEBACK_ENV}=1 for the traceback)")
    return "\n".join(lines)


def _quiet_named_error_tracebacks() -> None:
    """Log records about a named error keep their message and lose their traceback (Prefect's included).

    A record factory, not a handler filter, so it applies to handlers Prefect sets up later too.
    """
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "opsfabric_quiet", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.exc_info and isinstance(record.exc_info[1], OpsFabricError):
            record.exc_info = None
            record.exc_text = None
        return record

    factory.opsfabric_quiet = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
