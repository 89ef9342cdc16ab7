"""Headless Debian Chromium for the Prefect UI tests: the driver, waits, evidence, and what a form should show.

Selenium drives ``/usr/bin/chromium`` through ``/usr/bin/chromedriver``; both paths are passed
explicitly so selenium-manager never runs (it would try to download a browser or a driver), and
``SE_OFFLINE=1`` keeps it offline should anything still call it.

The UI is Prefect's Vue single-page app (``prefect-ui-library``): pages render after their API
calls return, so every check waits for a condition with :class:`WebDriverWait`, never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# STACK.md: no GPU, no QUIC, nothing that phones home; wide enough that the deployments table
# shows every schedule tag instead of folding long ones into "+1".
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1920,1400",
)
WAIT_SECONDS = 30.0  # upper bound for one UI condition on a busy 2-core machine; usually < 2 s


def start_chromium(profile_dir: Path, log: Path) -> WebDriver:
    """A headless Chromium with a fresh profile folder; fails with the install hint when it is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
                           "(apt-get install chromium chromium-driver; .ci/run does it on CI)")
    os.environ["SE_OFFLINE"] = "1"  # selenium-manager, if ever reached, must not download anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    log.parent.mkdir(parents=True, exist_ok=True)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(log)), options=options)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Wait until ``condition(driver)`` is truthy and return its value; the timeout names what was awaited."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise AssertionError(f"the UI did not show {what} within {timeout:.0f} s (at {driver.current_url})") from None


VISIBLE_JS = """
const [root, css] = arguments;
return [...(root || document).querySelectorAll(css)].filter(e => e.checkVisibility({visibilityProperty: true}));
"""


def visible(scope: WebDriver | WebElement, css: str) -> list[WebElement]:
    """The rendered, visible elements matching ``css`` under ``scope`` (Vue keeps hidden ones in the DOM).

    One script call instead of one ``is_displayed()`` round trip per element: the flow-run page's
    graph keeps the renderer busy, and each WebDriver command waits its turn.
    """
    if isinstance(scope, WebElement):
        return scope.parent.execute_script(VISIBLE_JS, scope, css)
    return scope.execute_script(VISIBLE_JS, None, css)


def click_when_ready(driver: WebDriver, css: str, what: str) -> None:
    def clickable(d: WebDriver) -> WebElement | bool:
        found = visible(d, css)
        return found[0] if found and found[0].is_enabled() else False

    wait_for(driver, clickable, what).click()


@contextlib.contextmanager
def evidence_on_failure(driver: WebDriver, folder: Path, name: str) -> Iterator[None]:
    """On any failure inside the block keep a screenshot and the page source under ``folder/name``."""
    try:
        yield
    except BaseException as exc:
        target = folder / re.sub(r"[^\w.-]+", "_", name)
        target.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(WebDriverException):
            driver.save_screenshot(str(target / "screenshot.png"))
            (target / "page.html").write_text(driver.page_source)
            (target / "url.txt").write_text(driver.current_url + "\n")
        note = f"browser evidence (screenshot, page source): {target}"
        print(note)
        if isinstance(exc, Exception):
            exc.add_note(note)
        raise


# ---- what the UI should render, derived from the deployment's parameter schema -----------------

def cron_clock(cron: str) -> str | None:
    """The time of day the UI's cron description shows (``30 2 * * *`` -> ``02:30 AM``); None if not fixed."""
    fields = cron.split()
    if len(fields) != 5 or not (fields[0].isdigit() and fields[1].isdigit()):
        return None
    minute, hour = int(fields[0]), int(fields[1])
    return f"{hour % 12 or 12:02d}:{minute:02d} {'AM' if hour < 12 else 'PM'}"


@dataclass(frozen=True)
class ExpectedField:
    """One top-level parameter as the custom-run form should show it."""

    name: str
    label: str  # "name", or "name (Optional)" when the parameter has a default
    description: str | None  # markdown source from the flow's docstring / Field(description=...)
    control: str  # "select", "toggle", "number", "text", "any-of", "array", "object"
    options: tuple[str, ...] = ()  # the dropdown's choices for a Literal / Enum parameter
    value: Any = None  # the deployment's value (or the default), shown pre-filled for scalars
    children: tuple[ExpectedField, ...] = ()  # the fields of a pydantic-model parameter


def resolve(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    """Follow ``$ref`` / single-element ``allOf`` into ``definitions`` (pydantic models, Enums)."""
    ref = prop.get("$ref") or (prop.get("allOf", [{}])[0].get("$ref") if len(prop.get("allOf", [])) == 1 else None)
    if not ref:
        return prop
    target = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in prop.items() if k not in ("$ref", "allOf")}}


def expected_fields(schema: dict[str, Any], parameters: dict[str, Any], obj: dict[str, Any] | None = None) -> list[ExpectedField]:
    """The form's fields of ``obj`` (default: the top level) in position order, with the control each type gets.

    Args:
        schema: the deployment's whole parameter schema (``definitions`` are resolved against it).
        parameters: the values the form is pre-filled with (deployment parameters, or a model's values).
        obj: an object schema inside ``schema`` whose properties to list (a pydantic-model parameter).
    """
    obj = schema if obj is None else obj
    required = set(obj.get("required", []))
    props = sorted(obj.get("properties", {}).items(), key=lambda kv: kv[1].get("position", 0))
    fields = []
    for name, raw in props:
        prop = resolve(schema, raw)
        kind = prop.get("type")
        options: tuple[str, ...] = ()
        if "anyOf" in prop:
            control = "any-of"
        elif "enum" in prop:
            control, options = "select", tuple(str(v) for v in prop["enum"])
        elif kind == "boolean":
            control = "toggle"
        elif kind in ("integer", "number"):
            control = "number"
        elif kind == "string":
            control = "text"
        elif kind == "array":
            control = "array"
        else:
            control = "object"
        title = raw.get("title", name)
        value = parameters.get(name, prop.get("default"))
        children = ()
        if control == "object" and prop.get("properties"):
            children = tuple(expected_fields(schema, value if isinstance(value, dict) else {}, prop))
        fields.append(ExpectedField(
            name=name,
            label=title if name in required else f"{title} (Optional)",
            description=raw.get("description") or prop.get("description"),
            control=control,
            options=options,
            value=value,
            children=children,
        ))
    return fields


def markdown_text(source: str) -> str:
    """What rendered markdown of a one-line description reads as (code spans lose their backticks)."""
    return " ".join(source.replace("`", "").split())


PROPERTIES = "div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-properties ')]"
PROPERTY = "div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')]"


def form_property(scope: WebDriver | WebElement, label: str) -> WebElement | None:
    """The ``.schema-form-property`` whose own header label reads ``label``: top-level for the driver,
    a direct child field for a model-typed property element."""
    if isinstance(scope, WebElement):
        properties = f"(./div[contains(@class, 'p-label__body')]//{PROPERTIES})[1]"
    else:
        properties = f"//{PROPERTIES}[not(ancestor::{PROPERTIES})]"
    xpath = (f"{properties}/{PROPERTY}"
             f"[./div[contains(@class, 'p-label__header')]//span[contains(@class, 'schema-form-property__label')][normalize-space()={xpath_literal(label)}]]")
    found = scope.find_elements(By.XPATH, xpath)
    return found[0] if found else None


def xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


def form_labels(driver: WebDriver) -> list[str]:
    """Labels of the top-level parameters the form shows, in order."""
    top = ("//div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-properties ')]"
           "[not(ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-properties ')])]"
           "/div/div[contains(@class, 'p-label__header')]//span[contains(@class, 'schema-form-property__label')]")
    return [e.text.strip() for e in driver.find_elements(By.XPATH, top)]


def field_problems(element: WebElement, field: ExpectedField) -> list[str]:
    """What differs between a rendered property and its expectation (empty when it matches)."""
    problems = []
    header = element.find_element(By.XPATH, "./div[contains(@class, 'p-label__header')]")
    descriptions = header.find_elements(By.CSS_SELECTOR, ".schema-form-property__description")
    if field.description:
        shown = markdown_text(descriptions[0].text) if descriptions else None
        if shown != markdown_text(field.description):
            problems.append(f"description {shown!r} != {markdown_text(field.description)!r}")
    body = element.find_element(By.XPATH, "./div[contains(@class, 'p-label__body')]")
    if field.control == "select":
        selects = [s for s in body.find_elements(By.CSS_SELECTOR, "select") if s.find_elements(By.TAG_NAME, "option")]
        options = tuple(o.get_attribute("value") for o in selects[0].find_elements(By.TAG_NAME, "option")) if selects else ()
        if options != field.options:
            problems.append(f"dropdown options {options} != {field.options}")
        elif field.value is not None and selects[0].get_property("value") != str(field.value):
            problems.append(f"dropdown shows {selects[0].get_property('value')!r}, expected {field.value!r}")
    elif field.control == "toggle":
        switches = body.find_elements(By.CSS_SELECTOR, "[role=switch]")
        if not switches:
            problems.append("no toggle switch")
        elif field.value is not None and switches[0].get_attribute("aria-checked") != str(bool(field.value)).lower():
            problems.append(f"toggle is {switches[0].get_attribute('aria-checked')}, expected {field.value}")
    elif field.control == "number":
        inputs = body.find_elements(By.CSS_SELECTOR, "input[type=number]")
        if not inputs:
            problems.append("no number input")
        elif field.value is not None and inputs[0].get_property("value") != str(field.value):
            problems.append(f"number input shows {inputs[0].get_property('value')!r}, expected {field.value!r}")
    elif field.control == "text":
        boxes = body.find_elements(By.CSS_SELECTOR, "textarea, input[type=text]")
        if not boxes:
            problems.append("no text box")
        elif field.value is not None and boxes[0].get_property("value") != field.value:
            problems.append(f"text box shows {boxes[0].get_property('value')!r}, expected {field.value!r}")
    elif field.control == "any-of":
        if "schema-form-property-any-of-input" not in (element.get_attribute("class") or ""):
            problems.append("no type switch for a union (anyOf) parameter")
    elif field.control == "object":
        for child in field.children:
            found = form_property(element, child.label)
            problems += [f"{child.name}: {p}" for p in (field_problems(found, child) if found is not None else ["not on the form"])]
    elif field.control == "array":
        if not body.find_elements(By.CSS_SELECTOR, ".schema-form-property-array"):
            problems.append("no list editor for an array parameter")
        elif isinstance(field.value, list) and all(isinstance(v, str) for v in field.value):
            items = [t.get_property("value") for t in body.find_elements(By.CSS_SELECTOR, ".schema-form-property-array-item textarea")]
            if items != field.value:
                problems.append(f"list shows {items}, expected {field.value}")
    return problems
