"""The runs dashboard in a real headless Chromium (Debian's, driven by Selenium) against a
real Flower, worker and Redis: what a person sees and clicks."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import QUEUE, wait_for_event
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait
from web_helpers import USER, WebFlower, chrome, web_flower
from web_workflows import write_definitions

from runbook_celery import get_run
from runbook_celery.client.run import Run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
WAIT = 30  # seconds a page may take to show what a test waits for


@pytest.fixture(scope="module")
def fl(worker, tmp_path_factory) -> Iterator[WebFlower]:  # type: ignore[no-untyped-def]
    defs = write_definitions(tmp_path_factory.mktemp("defs"))
    with web_flower(tmp_path_factory.mktemp("logs"), f"--definitions={defs}") as server:
        yield server


@pytest.fixture(scope="module")
def browser(fl, tmp_path_factory):  # type: ignore[no-untyped-def]
    driver = chrome(tmp_path_factory.mktemp("profile"), fl)
    yield driver
    driver.quit()


def trigger(fl: WebFlower, workflow: str, **params: str) -> str:
    resp = fl.request("POST", "/api/runs", {"workflow": workflow, "params": params})
    assert resp.status == 201, resp.text
    return str(resp.json["id"])


def wait(browser, condition, what: str):  # type: ignore[no-untyped-def]
    # live updates replace page elements: one found just before a replacement goes stale,
    # which means "look again", as an element not found yet does
    waiter = WebDriverWait(
        browser, WAIT, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    )
    return waiter.until(condition, message=f"page never showed {what}")


def row(browser, step: str):  # type: ignore[no-untyped-def]
    return browser.find_element(By.ID, f"step-{step}")


def node_status(browser, step: str) -> str:  # type: ignore[no-untyped-def]
    node = browser.find_element(By.CSS_SELECTOR, f'#rb-dag g[data-step="{step}"]')
    return str(node.get_attribute("data-status"))


def save(browser, name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A screenshot; copied to $RUNBOOK_WEB_SCREENSHOTS (docs/) when that is set."""
    shot = tmp_path / name
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if target := os.environ.get("RUNBOOK_WEB_SCREENSHOTS"):
        shutil.copyfile(shot, Path(target) / name)


def test_runs_list_and_a_failed_runs_page_show_every_step_with_reasons(fl, browser, tmp_path):
    run_id = trigger(fl, "web-failing", who="chromium")
    Run(run_id).wait(timeout=60)
    browser.get(f"{fl.base}/runs")
    listed = browser.find_element(By.CSS_SELECTOR, f'tr[data-run="{run_id}"]')
    assert (
        "failed" in listed.text and "web-failing" in listed.text and "who=chromium" in listed.text
    )
    assert re.fullmatch(r"\d+ runs?", browser.find_element(By.ID, "rb-run-count").text)
    nav = browser.find_element(By.CSS_SELECTOR, "nav a.active")
    assert nav.text == "Runs"  # our tab, in Flower's own navbar

    listed.find_element(By.CSS_SELECTOR, "a.rb-run-link").click()
    wait(browser, expected_conditions.url_contains(f"/runs/{run_id}"), "the run page")
    assert browser.find_element(By.ID, "rb-run-status").text == "failed"
    rows = browser.find_elements(By.CSS_SELECTOR, "#rb-steps-table tbody tr")
    assert [r.get_attribute("data-step") for r in rows] == [
        "build",
        "test",
        "lint",
        "deploy",
        "notify",
    ]
    assert "exit code 3" in row(browser, "test").text
    assert (
        row(browser, "test").find_element(By.CSS_SELECTOR, ".rb-stderr pre").text
        == "FAIL: test_login"
    )
    for skipped in ("deploy", "notify"):
        assert row(browser, skipped).get_attribute("data-status") == "skipped"
        assert (
            row(browser, skipped).find_element(By.CSS_SELECTOR, ".rb-reason").text
            == "needs test failed"
        )
        assert node_status(browser, skipped) == "skipped"
    assert node_status(browser, "test") == "failed"
    edges = browser.find_elements(By.CSS_SELECTOR, "#rb-dag path.rb-edge")
    assert sorted((e.get_attribute("data-from"), e.get_attribute("data-to")) for e in edges) == [
        ("build", "lint"),
        ("build", "test"),
        ("deploy", "notify"),
        ("lint", "deploy"),
        ("test", "deploy"),
    ]
    link = row(browser, "test").find_element(By.CSS_SELECTOR, "a.rb-task-link")
    assert link.get_attribute("href") == f"{fl.base}/task/{run_id}.test"
    assert (
        "artifact" in row(browser, "build").text
        and "app-chromium.tgz" in row(browser, "build").text
    )
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(url.startswith(fl.base + "/") for url in loaded), (
        loaded
    )  # nothing from outside
    save(browser, "run-page.png", tmp_path)


def test_a_running_fan_out_updates_without_reload(fl, browser, store, tmp_path):
    gate = tmp_path / "go"
    run_id = trigger(fl, "web-fanout", gate=str(gate))
    for index in range(3):  # max_parallel: 3 instances run, 3 wait for a lane
        wait_for_event(store, run_id, "step_started", f"work[{index}]")
    browser.get(f"{fl.base}/runs/{run_id}")
    browser.execute_script("window.rbMarker = 'same page'")
    assert node_status(browser, "work") == "running"
    assert "0/6" in browser.find_element(By.CSS_SELECTOR, '#rb-dag g[data-step="work"]').text
    assert row(browser, "work[4]").get_attribute("data-status") == "pending"
    assert "a free lane of work" in row(browser, "work[4]").text
    assert f"queue {QUEUE}" in row(browser, "work[4]").text
    assert row(browser, "work[0]").find_element(By.CSS_SELECTOR, ".rb-values").text == "item=a"
    save(browser, "run-live.png", tmp_path)
    row(browser, "work[0]").find_element(By.CSS_SELECTOR, "[data-rb-log]").click()
    wait(browser, lambda b: "working on a" in b.find_element(By.ID, "rb-log").text, "the live log")

    gate.touch()
    wait(
        browser, lambda b: b.find_element(By.ID, "rb-run-status").text == "succeeded", "the run end"
    )
    assert node_status(browser, "work") == "succeeded"
    assert "6/6" in browser.find_element(By.CSS_SELECTOR, '#rb-dag g[data-step="work"]').text
    assert node_status(browser, "report") == "succeeded"
    assert [row(browser, f"work[{i}]").get_attribute("data-status") for i in range(6)] == [
        "succeeded"
    ] * 6
    assert browser.execute_script("return window.rbMarker") == "same page"  # never reloaded


def test_approving_a_gate_by_clicking_records_the_logged_in_user(fl, browser, store):
    run_id = trigger(fl, "web-gated")
    wait_for_event(store, run_id, "step_awaiting_approval", "release")
    browser.get(f"{fl.base}/runs/{run_id}")
    gate = row(browser, "release")
    assert "waiting for an approval" in gate.text
    assert gate.find_element(By.CSS_SELECTOR, ".rb-prompt").text == "Release build 42 to prod?"
    assert node_status(browser, "release") == "awaiting_approval"
    browser.execute_script("window.rbMarker = 'same page'")
    gate.find_element(By.CSS_SELECTOR, 'button[data-rb-action="approve"]').click()
    alert = wait(browser, expected_conditions.alert_is_present(), "the confirmation")
    assert "Release build 42 to prod?" in alert.text
    alert.accept()
    wait(
        browser, lambda b: b.find_element(By.ID, "rb-run-status").text == "succeeded", "the run end"
    )
    assert f"approved by {USER}" in row(browser, "release").text
    assert browser.execute_script("return window.rbMarker") == "same page"
    record = get_run(run_id)
    assert record.steps["release"].control["approved_by"] == USER
    approved = [f for _, f in store.events(run_id) if f["type"] == "step_approved"]
    assert [e["by"] for e in approved] == [USER]


def test_triggering_from_the_form_with_a_param(fl, browser, tmp_path):
    browser.get(f"{fl.base}/runs")
    browser.find_element(By.ID, "rb-trigger-link").click()
    form = wait(
        browser,
        expected_conditions.presence_of_element_located((By.ID, "rb-wf-web-failing")),
        "the trigger form",
    )
    field = form.find_element(By.CSS_SELECTOR, 'input[data-param="who"]')
    assert field.get_attribute("value") == "world"  # the definition's default
    field.clear()
    field.send_keys("from-the-form")
    # a choice param is a list of its options, with its description beside it
    choice = Select(form.find_element(By.CSS_SELECTOR, 'select[data-param="target"]'))
    assert [o.text for o in choice.options] == ["staging", "prod"]
    assert choice.first_selected_option.text == "staging"  # the default
    assert "where to" in form.text
    choice.select_by_visible_text("prod")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, expected_conditions.url_matches(r"/runs/[0-9a-f]{32}$"), "the new run's page")
    run_id = browser.current_url.rsplit("/", 1)[1]
    record = Run(run_id).wait(timeout=60)
    assert record.workflow == "web-failing"
    assert record.params == {"who": "from-the-form", "target": "prod"}
    assert record.control["triggered_by"] == USER
    wait(browser, lambda b: b.find_element(By.ID, "rb-run-status").text == "failed", "the run end")
    assert browser.find_element(By.CSS_SELECTOR, '.rb-by[data-field="triggered_by"]').text == USER
    browser.get(f"{fl.base}/runs")  # the list with this module's runs, for the docs
    save(browser, "runs-list.png", tmp_path)
