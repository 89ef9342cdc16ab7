"""Ask the ops agent, and answer its approvals from any process: ``python -m flows.agent <verb>``.

* ``ask "check drift on batch_02 and retrain if needed"``: runs until done or until a risky action
  waits for approval; then prints the pending action and the thread id.
* ``approve THREAD --action ID``, ``deny THREAD --action ID --reason "..."``,
  ``edit THREAD --action ID --args '{"batch": "batch_03"}'``: answer the pending action whose id the
  ``PENDING`` line printed (another process, any time later: the thread lives in
  ``<state_dir>/agents/checkpoints.sqlite``). A decision for an action that is no longer pending
  (already answered; the thread may now wait on another action) is refused, never applied to the
  action pending now.
* ``pending THREAD``: show what a thread waits for.

As a Prefect flow (``agent_ask_flow``, deployment ``agent-ask``), a pending action pauses the flow
run with a typed resume form (approve / deny with a reason / edit with JSON arguments) and the
LangGraph thread resumes from its checkpoint when the operator submits it.

``--backend replay`` uses the replay fixture of the regression suite instead of the live platform.
An unknown, finished or already answered thread is a named error (exit status 2).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Literal

from prefect import flow


def _agent(settings: Any, backend_kind: str, profile: str | None, fixture: str | None = None):
    from opsfabric.agents.agent import build_agent, open_checkpointer

    folder = settings.state_dir / "agents"
    if backend_kind == "replay":
        from opsfabric.agents.replay import ReplayBackend

        from opsfabric.agents.replay import DEFAULT_FIXTURE

        backend = ReplayBackend(fixture or DEFAULT_FIXTURE, journal=folder / "replay-journal.jsonl")
    else:
        from opsfabric.agents.backend import PlatformBackend

        backend = PlatformBackend(settings)
    cp = open_checkpointer(folder / "checkpoints.sqlite", settings.agents.sqlite_busy_timeout_seconds)
    return build_agent(settings.agents, backend, cp, profile=profile), folder


def _pending_line(p: Any) -> str:
    from opsfabric.agents.trace import redact

    return f"PENDING {p.tool} {json.dumps(redact(p.args), sort_keys=True)} ACTION {p.interrupt_id}"


def _report(result: Any, folder: Any, settings: Any) -> int:
    from opsfabric.agents.trace import render_timeline, write_trace
    from opsfabric.agents.tracing import send_to_mlflow
    from opsfabric.tracking import experiment_id, mlflow_client

    if result.status == "awaiting_approval":
        for p in result.pending:
            print(_pending_line(p))
        print(f"THREAD {result.thread_id}")
        action = result.pending[0].interrupt_id
        print(f"answer with: python -m flows.agent approve {result.thread_id} --action {action} | "
              f"deny {result.thread_id} --action {action} --reason ... | edit {result.thread_id} --action {action} --args '{{...}}'")
        return 0
    path = write_trace(result.trace, folder / "traces")
    mlflow_trace = send_to_mlflow(result.trace, mlflow_client(settings), experiment_id(settings, "agent-runs"))
    print(render_timeline(result.trace))
    print(f"STATUS {result.status}" + (f" ({result.stop_reason})" if result.stop_reason else ""))
    print(f"THREAD {result.thread_id}")
    print(f"TRACE {path} (MLflow trace {mlflow_trace})")
    return 0


@flow(name="agent-ask", log_prints=True)
def agent_ask_flow(request: str, profile: str | None = None, backend: Literal["platform", "replay"] = "platform",
                   config_files: list[str] | None = None, approval_timeout_seconds: int = 3600) -> dict:
    """Run one request; each pending risky action pauses this flow run for an operator's decision in the UI.

    Args:
        request: what to do, in words, e.g. "check drift on batch_04 and retrain if needed".
        profile: an ``agents.profiles`` key (allowlist, approvals, budget); empty: ``agents.default_profile``.
        backend: ``platform`` acts on the live registry, index and drift store; ``replay`` on the recorded fixture.
        config_files: extra YAML overlays of the configuration.
        approval_timeout_seconds: how long a pending action waits for an operator before the run fails.
    """
    from prefect import get_run_logger

    from flows.runners import flow_settings
    from opsfabric.agents.agent import resume_run, start_run
    from opsfabric.agents.errors import ToolArgumentError
    from opsfabric.agents.trace import redact_text
    from opsfabric.locking import exclusive
    from tasks.agents import publish_trace, wait_for_approval

    settings = flow_settings(config_files)
    agent, _ = _agent(settings, backend, profile)
    result = start_run(agent, request)
    attempt, refused = 0, None
    while result.status == "awaiting_approval":
        pending = result.pending[0]
        attempt += 1
        answer = wait_for_approval(pending, result.thread_id, approval_timeout_seconds, attempt=attempt, previous_error=refused)
        lock = exclusive(settings, f"agent-thread-{result.thread_id}", purpose=f"answer thread {result.thread_id} from the Prefect UI")
        try:
            # the form answered this action: if it is no longer pending (answered elsewhere), refuse rather than answer another
            result = resume_run(agent, result.thread_id, answer.to_decision(pending.tool), lock=lock,
                                expected_interrupt_id=pending.interrupt_id)
            attempt, refused = 0, None
        except ToolArgumentError as exc:  # bad JSON, or edited arguments the schema refuses: refused before anything ran
            refused = str(exc)
            get_run_logger().warning("answer for %s refused, asking again: %s", pending.tool, redact_text(refused))
    trace_path = publish_trace(settings, result.trace)
    print(f"{result.status}: {redact_text(result.answer)}")  # log_prints: Prefect logs get the redacted text
    return {"thread_id": result.thread_id, "status": result.status, "stop_reason": result.stop_reason,
            "answer": redact_text(result.answer), "trace": trace_path}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["platform", "replay"], default="platform")
    parser.add_argument("--profile", default=None, help="agents.profiles key (default: agents.default_profile)")
    parser.add_argument("--fixture", default=None, help="replay fixture JSON for --backend replay (default: the suite's)")
    sub = parser.add_subparsers(dest="verb", required=True)
    ask = sub.add_parser("ask", help="run a request")
    ask.add_argument("request")
    ask.add_argument("--thread", default=None, help="thread id (default: a new one)")
    for verb in ("approve", "deny", "edit", "pending"):
        p = sub.add_parser(verb, help=f"{verb} the pending action of a thread")
        p.add_argument("thread")
        if verb != "pending":
            p.add_argument("--action", required=True, help="the action id the PENDING line printed (after ACTION)")
        if verb == "deny":
            p.add_argument("--reason", required=True)
        if verb == "edit":
            p.add_argument("--args", required=True, help="the edited arguments as a JSON object")
    args = parser.parse_args(argv)

    from opsfabric.agents.agent import pending_actions, resume_run, start_run
    from opsfabric.agents.errors import AgentError
    from opsfabric.locking import exclusive
    from opsfabric.settings import load_settings

    settings = load_settings()
    agent, folder = _agent(settings, args.backend, args.profile, args.fixture)
    if args.verb == "ask":
        lock = exclusive(settings, f"agent-thread-{args.thread}", purpose=f"start thread {args.thread}") if args.thread else None
        return _report(start_run(agent, args.request, thread_id=args.thread, lock=lock), folder, settings)
    if args.verb == "pending":
        pending = pending_actions(agent, args.thread, known=True)
        for p in pending:
            print(_pending_line(p))
        if not pending:
            print(f"thread {args.thread} waits for no approval (finished, stopped, or already answered)")
        return 0
    if args.verb == "approve":
        decision: dict[str, Any] = {"type": "approve"}
    elif args.verb == "deny":
        decision = {"type": "reject", "message": args.reason}
    else:
        try:
            edited = json.loads(args.args)
        except ValueError as exc:
            raise AgentError(f"--args is not valid JSON: {exc}", hint='e.g. --args \'{"batch": "batch_03"}\'') from None
        decision = {"type": "edit", "edited_action": {"args": edited}}  # checked against the pending action's schema under the lock
    lock = exclusive(settings, f"agent-thread-{args.thread}", purpose=f"{args.verb} the pending action of thread {args.thread}")
    return _report(resume_run(agent, args.thread, decision, lock=lock, expected_interrupt_id=args.action), folder, settings)


if __name__ == "__main__":
    from opsfabric.cli import run_command

    raise SystemExit(run_command(main))
