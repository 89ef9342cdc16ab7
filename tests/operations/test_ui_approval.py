"""An operator answers a pending agent action in the Prefect UI's resume form, in headless Chromium.

One real ``prefect server start`` (UI on) per module. Each test runs ``agent_ask_flow`` (the replay
backend, state under the test's tmp dir) in a background thread of this process against that
server; the agent asks to retrain on ``batch_03`` and the flow run pauses with the typed
``ApprovalInput`` form (``tasks/agents.py``). The browser opens the flow run page, checks the
Paused badge, clicks Resume, reads the pending action in the form's description, picks a decision
in the dropdown rendered from ``ApprovalInput.decision``'s ``Literal`` and submits. The API says when
the run is paused again or finished; the replay journal says what was really executed.

What the form should show is derived from ``ApprovalInput`` (field titles, the dropdown's choices
and default), so a new field or choice changes the expectation without editing this file. On
failure the screenshot and page source are kept under ``$OPSFABRIC_TEST_STATE/screenshots/<test>/``.

    OPSFABRIC_TEST_STATE=/tmp/ui .venv/bin/pytest -q -m browser tests/operations/test_ui_approval.py
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.operations.browser import (
    evidence_on_failure,
    expected_fields,
    field_problems,
    form_labels,
    form_property,
    start_chromium,
    visible,
    wait_for,
)
from tests.servers import Server, prefect_client_at, start_prefect_server

pytestmark = [pytest.mark.browser, pytest.mark.server]

REQUEST = "retrain the model on batch 3"  # the replay agent asks to run trigger_retraining on batch_03
TOOL, BATCH = "trigger_retraining", "batch_03"
APPROVAL_TIMEOUT = 120  # seconds the paused run waits for the form; a failed test answers it (deny) instead
API_WAIT = 60.0  # upper bound for one flow-run condition in the API (pause: ~5-10 s, the agent's imports)
REFUSED = "Your previous answer was refused"


@dataclass(frozen=True)
class ApprovalStack:
    server: Server
    ui_url: str  # the UI's root, e.g. http://127.0.0.1:PORT
    browser: WebDriver


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> ApprovalStack:
    """A real Prefect server + UI, this process's client pointed at it, and a headless Chromium."""

    base = tmp_path_factory.mktemp("ui-approval")
    with ThreadPoolExecutor(2) as pool:  # the server needs ~10-25 s: start the browser meanwhile
        starting = pool.submit(start_prefect_server, base / "prefect")
        opening = pool.submit(start_chromium, base / "chromium" / "profile", base / "chromium" / "chromedriver.log")
        try:
            server, browser = starting.result(), opening.result()
        except BaseException:  # one of them failed: stop the other
            for future, stop in ((starting, Server.stop), (opening, WebDriver.quit)):
                if future.exception() is None:
                    stop(future.result())
            raise
    try:
        with prefect_client_at(server.url), pytest.MonkeyPatch.context() as mp:
            mp.setenv("PREFECT_API_URL", server.url)  # for anything that reads the environment
            yield ApprovalStack(server, server.url.removesuffix("/api"), browser)
    finally:
        with contextlib.suppress(Exception):
            browser.quit()
        server.stop()


@pytest.fixture
def evidence(stack: ApprovalStack, request):
    """``with evidence(): ...`` keeps a screenshot and the page source if the block fails."""
    folder = Path(os.environ.get("OPSFABRIC_TEST_STATE", ".pytest_state")) / "screenshots"
    return lambda: evidence_on_failure(stack.browser, folder, request.node.name)


# ---- the agent flow in a background thread, watched through the API ------------------------------

@dataclass
class AgentRun:
    """``agent_ask_flow`` running in a thread under a unique flow run name, and its state folder."""

    name: str
    state_dir: Path
    thread: threading.Thread | None = None
    outcome: dict[str, Any] = field(default_factory=dict)  # "result" or "error" once the flow returned

    @property
    def journal(self) -> Path:
        return self.state_dir / "agents" / "replay-journal.jsonl"

    def executed(self) -> list[tuple[str, str | None]]:
        """(action, batch) of every side effect the replay backend executed."""
        if not self.journal.exists():
            return []
        return [(line["action"], line.get("batch")) for line in map(json.loads, self.journal.read_text().splitlines())]

    def flow_run(self) -> Any:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[self.name])))
        return runs[0] if runs else None

    def wait(self, condition: Callable[[Any], bool], what: str, timeout: float = API_WAIT) -> Any:
        """Poll the API until ``condition(flow_run)`` holds; fail early, with its error, if the flow thread ended."""
        deadline = time.monotonic() + timeout
        while True:
            ended = not self.thread.is_alive()  # checked before reading: the state read next is then its last
            run = self.flow_run()
            if run is not None and run.state is not None and condition(run):
                return run
            if ended:
                ended = self.outcome.get("error", self.outcome.get("result"))
                raise AssertionError(f"the agent flow ended ({ended!r}) while waiting for {what}")
            if time.monotonic() > deadline:
                shown = f"{run.state.type.value} ({run.state.name})" if run is not None and run.state else "no such run"
                raise AssertionError(f"flow run {self.name!r}: no {what} within {timeout:.0f} s (now: {shown})")
            time.sleep(0.3)

    def result(self, timeout: float = API_WAIT) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the agent flow thread of {self.name!r} did not return within {timeout:.0f} s"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


@pytest.fixture
def agent_run(stack: ApprovalStack, tmp_path) -> AgentRun:
    """Start the agent flow; on teardown a run still waiting is denied through the API so its thread ends."""
    from prefect.flow_runs import resume_flow_run

    from flows.agent import agent_ask_flow

    state_dir = tmp_path / "state"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(state_dir)}))
    run = AgentRun(name=f"ui-approval-{uuid.uuid4().hex[:12]}", state_dir=state_dir)
    flow = agent_ask_flow.with_options(flow_run_name=run.name)

    def target() -> None:
        try:
            run.outcome["result"] = flow(REQUEST, backend="replay", config_files=[str(overlay)],
                                         approval_timeout_seconds=APPROVAL_TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 - the test reports the flow's error
            run.outcome["error"] = exc

    # the thread gets this context: the Prefect settings point at the module's server
    run.thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name=run.name, daemon=True)
    run.thread.start()
    yield run
    for _ in range(5):  # a failed test may leave the run paused (possibly paused again): answer it
        if not run.thread.is_alive():
            break
        with contextlib.suppress(Exception):
            current = run.flow_run()
            if current is not None and current.state is not None and current.state.is_paused():
                resume_flow_run(current.id, run_input={"decision": "deny", "reason": "test teardown"})
        run.thread.join(10)


def paused(run: Any) -> bool:
    return run.state.is_paused()


# ---- the UI: the flow run page and its resume form ------------------------------------------------

@functools.cache
def approval_fields() -> tuple[Any, ...]:
    """The resume form's fields as ``ApprovalInput``'s schema defines them (titles, choices, defaults)."""
    from tasks.agents import ApprovalInput

    return tuple(expected_fields(ApprovalInput.model_json_schema(), {}))


def label(name: str) -> str:
    return next(f.label for f in approval_fields() if f.name == name)


def open_flow_run(browser: WebDriver, ui_url: str, run: Any) -> WebElement:
    """Load the flow run page; the state badge once the page shows this run."""
    browser.get(f"{ui_url}/runs/flow-run/{run.id}")
    wait_for(browser, lambda d: run.name in [e.text for e in visible(d, ".p-bread-crumbs__crumb")], f"the run name {run.name!r}")
    return wait_for(browser, lambda d: visible(d, ".page-heading-flow-run__meta .state-badge"), "the state badge")[0]


def open_resume_form(browser: WebDriver, check_fields: bool = True) -> WebElement:
    """Click the page's Resume button; the modal once its form shows every ApprovalInput field,
    each with its control, choices and default (``check_fields``)."""
    wait_for(browser, lambda d: [b for b in visible(d, ".page-heading-flow-run button") if b.text.strip() == "Resume"],
             "the Resume button")[0].click()
    labels = [f.label for f in approval_fields()]
    modal = wait_for(browser, lambda d: visible(d, ".p-modal .p-modal__card"), "the Resume Flow Run dialog")[0]
    assert modal.find_element(By.CSS_SELECTOR, ".p-modal__title").text.strip() == "Resume Flow Run"
    wait_for(browser, lambda d: form_labels(d) == labels, f"the resume form's fields {labels}")
    if not check_fields:
        return modal
    problems = {f.name: field_problems(form_property(browser, f.label), f) for f in approval_fields()}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    return modal


PENDING_JS = """
const article = arguments[0].querySelector('.p-modal__body article.markdown-renderer');
return article && {text: article.innerText.split(/\\s+/).join(' ').trim(),
                   strong: [...article.querySelectorAll('.markdown-renderer__text--strong')].map(e => e.innerText.trim()),
                   code: [...article.querySelectorAll('code')].map(e => e.innerText.trim())};
"""


def pending_action(modal: WebElement) -> dict[str, Any]:
    """What the form's description (``ApprovalInput.with_initial_data(description=...)``, markdown) says:
    its text, bold parts (the tool) and code spans (arguments, thread, action); one script call."""
    return wait_for(modal.parent, lambda d: d.execute_script(PENDING_JS, modal), "the form's description")


def submit_answer(browser: WebDriver, modal: WebElement, decision: str, edited_args_json: str | None = None) -> None:
    """Fill the form (dropdown, and the JSON box for ``edit``), submit it, wait for the UI's confirmation."""
    select = form_property(browser, label("decision")).find_element(By.CSS_SELECTOR, "select")
    Select(select).select_by_value(decision)
    assert select.get_property("value") == decision
    if edited_args_json is not None:
        box = form_property(browser, label("edited_args_json"))
        box.find_element(By.CSS_SELECTOR, "textarea").send_keys(edited_args_json)
    [b for b in visible(modal, ".p-modal__footer button") if b.text.strip() == "Submit"][0].click()
    wait_for(browser, lambda d: any("resumed" in t.text.lower() for t in visible(d, ".p-toast__message")),
             "the toast confirming the flow run resumed")
    wait_for(browser, lambda d: not visible(d, ".p-modal .p-modal__card"), "the dialog closing")


def check_pending_retraining(action: dict[str, Any]) -> None:
    assert TOOL in action["strong"], action  # **trigger_retraining** `{...}` is waiting for approval ...
    assert any(BATCH in c for c in action["code"]), action  # its arguments name the batch


def check_completed(stack: ApprovalStack, run: AgentRun) -> None:
    finished = run.wait(lambda r: r.state.is_final(), "final state")
    assert finished.state.is_completed(), finished.state
    result = run.result()
    assert result["status"] == "completed", result
    assert run.executed() == [(TOOL, BATCH)]  # exactly one retraining, on the batch shown in the form
    badge = open_flow_run(stack.browser, stack.ui_url, finished)
    assert badge.text.strip() == "Completed" and "state--completed" in badge.get_attribute("class")


def test_operator_approves_the_pending_retraining_in_the_resume_form(stack: ApprovalStack, agent_run: AgentRun, evidence):
    run = agent_run.wait(paused, "Paused state (the pending approval)")
    assert agent_run.executed() == []  # nothing ran before the decision
    with evidence():
        badge = open_flow_run(stack.browser, stack.ui_url, run)
        assert badge.text.strip() == "Paused" and "state--paused" in badge.get_attribute("class")
        modal = open_resume_form(stack.browser)
        action = pending_action(modal)
        check_pending_retraining(action)
        assert REFUSED not in action["text"]
        submit_answer(stack.browser, modal, "approve")
        check_completed(stack, agent_run)
        assert agent_run.outcome["result"]["thread_id"] in action["code"]  # the form named the thread that ran


def test_a_bad_edit_in_the_form_is_refused_and_asked_again(stack: ApprovalStack, agent_run: AgentRun, evidence):
    first = agent_run.wait(paused, "Paused state (the pending approval)")
    with evidence():
        open_flow_run(stack.browser, stack.ui_url, first)
        modal = open_resume_form(stack.browser)
        submit_answer(stack.browser, modal, "edit", "{not json")
        again = agent_run.wait(lambda r: paused(r) and r.state.id != first.state.id, "new Paused state after the refused answer")
        assert agent_run.executed() == []  # the refused edit ran nothing
        badge = open_flow_run(stack.browser, stack.ui_url, again)  # reload: the page shows the new pause and its form
        assert badge.text.strip() == "Paused"
        modal = open_resume_form(stack.browser, check_fields=False)  # the same form: checked on the first pause
        action = pending_action(modal)
        assert f"{REFUSED}:" in action["text"] and "not valid JSON" in action["text"], action["text"]
        check_pending_retraining(action)  # the same action is still pending
        submit_answer(stack.browser, modal, "approve")
        check_completed(stack, agent_run)
