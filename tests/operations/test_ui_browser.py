"""The Prefect UI in headless Chromium: deployments with schedules, a finished run with its artifacts, typed run forms.

One real ``prefect server start`` (UI on) per module, every deployment of
``deployments.definitions`` registered with ``runner_deployments()``, and one real flow run: the
``validate`` flow on a small generated churn dataset (the fastest project flow that publishes
artifacts: one markdown report per validated file, ~2 s), run in this process against that server.

What the UI should show is read from the definitions and from the API (deployment schedules,
parameter schemas, the run's artifacts), so a flow gaining a typed parameter, a description or a
``Literal`` changes the expectation without editing this file. On failure the screenshot and page
source are kept under ``$OPSFABRIC_TEST_STATE/screenshots/<test>/`` (the path is printed).

    OPSFABRIC_TEST_STATE=/tmp/ui .venv/bin/pytest -q -m browser tests/operations/test_ui_browser.py
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from deployments.definitions import DEPLOYMENTS
from opsfabric.settings import PROJECT_ROOT
from tests.operations.browser import (
    click_when_ready,
    cron_clock,
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

SPECS = {spec.name: spec for spec in DEPLOYMENTS}
VALIDATED = ("reference", "batch_01")  # files the flow run validates: one artifact each


@dataclass(frozen=True)
class UiStack:
    server: Server
    ui_url: str  # the UI's root, e.g. http://127.0.0.1:PORT
    deployments: dict[str, Any]  # name -> DeploymentResponse (schedules, parameter schema)
    flow_run: Any  # the finished validate run
    artifact_keys: set[str]  # what the API lists for that run
    rows: dict[str, int]  # validated file stem -> its row count


def small_dataset_overlay(folder: Path) -> tuple[Path, list[Path]]:
    """Small generated churn data and a YAML overlay pointing the flows (and their state) at ``folder``."""
    from opsfabric.ml.datagen import generate_churn_batches

    data = folder / "churn"
    generate_churn_batches(data, seed=42, reference_rows=300, batch_rows=200, start_date="2025-01-01")
    dataset = yaml.safe_load((PROJECT_ROOT / "configs" / "base.yaml").read_text())["dataset"]
    files = [data / f"{stem}.parquet" for stem in VALIDATED]
    dataset.update(data_dir=str(data), reference=str(data / "reference.parquet"),
                   batches=[str(p) for p in sorted(data.glob("batch_*.parquet"))])
    overlay = folder / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"state_dir": str(folder / "state"), "dataset": dataset}))
    return overlay, files


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory) -> UiStack:
    """A real Prefect server + UI, every deployment registered, one finished flow run with artifacts."""
    import pandas as pd
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    base = tmp_path_factory.mktemp("ui-browser")
    with ThreadPoolExecutor(1) as pool:
        # the server needs ~10-25 s to answer: build the deployments and the data meanwhile
        starting = pool.submit(start_prefect_server, base / "prefect")
        try:
            from deployments.serve import runner_deployments
            from flows.validate import validate_flow

            deployments = runner_deployments()
            overlay, files = small_dataset_overlay(base)
        except BaseException:
            with contextlib.suppress(Exception):
                starting.result().stop()
            raise
        server = starting.result()
    try:
        with prefect_client_at(server.url), pytest.MonkeyPatch.context() as mp:
            mp.setenv("PREFECT_API_URL", server.url)  # for anything that reads the environment, e.g. subprocesses
            ids = [deployment.apply() for deployment in deployments]
            state = validate_flow(config_files=[str(overlay)], batches=[str(p) for p in files], return_state=True)
            assert state.is_completed(), f"the validate flow run ended {state!r}: the UI test needs a finished run"
            with get_client(sync_client=True) as client:
                registered = {d.name: d for d in (client.read_deployment(i) for i in ids)}
                flow_run = client.read_flow_run(state.state_details.flow_run_id)
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
            yield UiStack(server, server.url.removesuffix("/api"), registered, flow_run,
                          {a.key for a in artifacts if a.key}, {p.stem: len(pd.read_parquet(p)) for p in files})
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(ui_stack: UiStack, tmp_path_factory) -> WebDriver:
    folder = tmp_path_factory.mktemp("chromium")
    driver = start_chromium(folder / "profile", folder / "chromedriver.log")
    yield driver
    driver.quit()


@pytest.fixture
def evidence(browser: WebDriver, request):
    """``with evidence(): ...`` keeps a screenshot and the page source if the block fails."""
    folder = Path(os.environ.get("OPSFABRIC_TEST_STATE", ".pytest_state")) / "screenshots"
    return lambda: evidence_on_failure(browser, folder, request.node.name)


def test_deployments_page_lists_every_deployment_with_its_schedule(ui_stack: UiStack, browser: WebDriver, evidence):
    with evidence():
        browser.get(f"{ui_stack.ui_url}/deployments")
        wait_for(browser, lambda d: visible(d, "a.deployment-list__name"), "the deployments table")
        # ten rows a page by default: show them all so a new deployment cannot hide on page 2
        pager = browser.find_elements(By.CSS_SELECTOR, ".p-pager__limit-select select")
        if pager:
            Select(pager[0]).select_by_value("100")
        expected = set(SPECS)

        def names(d: WebDriver) -> set[str] | bool:
            shown = {a.get_attribute("title") for a in visible(d, "a.deployment-list__name")}
            return shown if shown >= expected else False

        shown = wait_for(browser, names, f"every deployment name {sorted(expected)}")
        assert shown == expected  # a fresh server: nothing but ours

        def schedules(d: WebDriver) -> dict[str, list[str]] | bool:
            tags = {}
            for row in d.find_elements(By.CSS_SELECTOR, "tr.p-table-row"):
                link = row.find_elements(By.CSS_SELECTOR, "a.deployment-list__name")
                if link:
                    cells = row.find_elements(By.CSS_SELECTOR, ".deployment-list__schedules-column")
                    tags[link[0].get_attribute("title")] = [t.text for t in visible(cells[0], ".deployment-schedule-tags__tag")] if cells else []
            settled = len(tags) == len(expected) and all(bool(tags[n]) == bool(SPECS[n].cron) for n in expected)
            return tags if settled else False

        tags = wait_for(browser, schedules, "a visible schedule tag on every scheduled deployment and none on the others")
        for name, spec in SPECS.items():
            registered = [s.schedule.cron for s in ui_stack.deployments[name].schedules]
            assert registered == ([spec.cron] if spec.cron else []), name
            if spec.cron:
                assert len(tags[name]) == 1, (name, tags[name])
                clock = cron_clock(spec.cron)
                assert clock is None or clock in tags[name][0], f"{name}: cron {spec.cron!r} shown as {tags[name][0]!r}"
            else:
                assert tags[name] == [], name


def test_finished_flow_run_page_shows_completed_and_its_artifacts(ui_stack: UiStack, browser: WebDriver, evidence):
    run = ui_stack.flow_run
    keys = {f"validation-{stem.replace('_', '-')}": stem for stem in VALIDATED}
    assert ui_stack.artifact_keys == set(keys)  # the flow's promise: one report per file (tasks/data.py)
    with evidence():
        browser.get(f"{ui_stack.ui_url}/runs/flow-run/{run.id}")
        wait_for(browser, lambda d: run.name in [e.text for e in visible(d, ".p-bread-crumbs__crumb")], f"the run name {run.name!r}")
        badge = wait_for(browser, lambda d: visible(d, ".page-heading-flow-run__meta .state-badge"), "the state badge")[0]
        assert badge.text.strip() == "Completed"
        assert "state--completed" in badge.get_attribute("class")

        click_when_ready(browser, "li.p-tab#artifacts", "the Artifacts tab")

        def cards(d: WebDriver) -> dict[str, Any] | bool:
            found = {c.find_element(By.CSS_SELECTOR, ".artifact-card__title").text: c
                     for c in visible(d, "#artifacts-content .artifact-card")}
            return found if set(found) >= ui_stack.artifact_keys else False

        shown = wait_for(browser, cards, f"artifact cards {sorted(ui_stack.artifact_keys)}")
        assert set(shown) == ui_stack.artifact_keys
        key, stem = sorted(keys.items())[0]
        card = shown[key]
        assert card.find_element(By.CSS_SELECTOR, ".artifact-card__subheader").get_attribute("textContent").strip() == "markdown"

        card.click()
        wait_for(browser, lambda d: "/artifacts/artifact/" in d.current_url, "the artifact page")
        heading = f"Validation of {stem}.parquet: PASSED"
        rows = f"{ui_stack.rows[stem]} rows"
        wait_for(browser, lambda d: any(heading in e.text and rows in e.text for e in visible(d, ".artifact-data-markdown")),
                 f"the rendered report {heading!r} with {rows!r}")


def check_form(browser: WebDriver, deployment: Any) -> None:
    """Every parameter of the deployment's schema is on the form with its label, description and control."""
    fields = expected_fields(deployment.parameter_openapi_schema, deployment.parameters)
    labels = [f.label for f in fields]
    wait_for(browser, lambda d: form_labels(d) == labels, f"the parameter fields {labels}")
    problems = {}
    for field in fields:
        found = form_property(browser, field.label)
        problems[field.name] = field_problems(found, field) if found is not None else ["not on the form"]
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}


def test_custom_run_form_of_agent_ask_has_typed_fields(ui_stack: UiStack, browser: WebDriver, evidence):
    deployment = ui_stack.deployments["agent-ask"]
    with evidence():
        browser.get(f"{ui_stack.ui_url}/deployments/deployment/{deployment.id}")
        click_when_ready(browser, ".run-menu__run-button", "the Run button")
        wait_for(browser, lambda d: [b for b in visible(d, ".run-menu__overflow-menu .p-overflow-menu-item")
                                     if b.text.strip() == "Custom run"], "the Custom run menu item")[0].click()
        wait_for(browser, lambda d: d.current_url.split("?")[0].endswith(f"/deployments/deployment/{deployment.id}/run"),
                 "the custom run page")
        check_form(browser, deployment)
        # what is stable about this flow: a required free-text request pre-filled with the deployment's value
        request = form_property(browser, "request")
        assert request is not None
        box = request.find_element(By.CSS_SELECTOR, "textarea")
        assert box.get_property("value") == SPECS["agent-ask"].parameters["request"]
        timeout = form_property(browser, "approval_timeout_seconds (Optional)")
        assert timeout.find_element(By.CSS_SELECTOR, "input[type=number]").get_property("value") == "3600"


@pytest.mark.parametrize("name", sorted(set(SPECS) - {"agent-ask"}))
def test_custom_run_form_matches_the_parameter_schema(name: str, ui_stack: UiStack, browser: WebDriver, evidence):
    """Descriptions from the flows' docstrings and dropdowns for Literal parameters, wherever the schema has them."""
    deployment = ui_stack.deployments[name]
    with evidence():
        browser.get(f"{ui_stack.ui_url}/deployments/deployment/{deployment.id}/run")
        check_form(browser, deployment)
