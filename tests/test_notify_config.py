"""`notify:` in a definition: shape, event names, apprise URLs and secrets, checked by `validate`.

Also the pure parts of sending: filling in secrets, the text of a message, settings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runbook_celery.core.errors import InvalidDefinition, InvalidSetting
from runbook_celery.core.settings import Settings
from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.definition.notifyconfig import (
    NOTIFY_EVENT_OF,
    MissingSecret,
    NotifyEvent,
    resolve,
    url_problem,
)
from runbook_celery.engine.notifymessage import BODY_CHARS, compose, masker
from runbook_celery.plan.compile import build_snapshot
from runbook_celery.plan.runrecord import RunRecord, StepRecord
from runbook_celery.store.events import EventType

pytestmark = pytest.mark.timeout(60)

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
STEPS = "steps:\n  - id: s\n    run: echo\n"


def load(text: str):  # type: ignore[no-untyped-def]
    return load_workflow_text(text, file="wf.yaml")


def problems_of(text: str) -> list[str]:
    with pytest.raises(InvalidDefinition) as info:
        load(text)
    return [p.render() for p in info.value.problems]


# ---------------------------------------------------------------- accepted shapes


def test_a_rule_with_events_and_urls_is_kept_in_the_snapshot_as_written():
    loaded = load(
        "name: n\nsecrets: [TOKEN]\nnotify:\n"
        "  - on: [failed, awaiting_approval]\n"
        "    urls:\n"
        "      - json://127.0.0.1:8080/hook\n"
        "      - json://hooks.example/x/${{ secrets.TOKEN }}\n" + STEPS
    )
    rule = loaded.workflow.notify[0]
    assert rule.on == [NotifyEvent.FAILED, NotifyEvent.AWAITING_APPROVAL]
    snapshot = build_snapshot(loaded, {})
    assert snapshot["notify"] == [
        {
            "on": ["failed", "awaiting_approval"],
            "urls": ["json://127.0.0.1:8080/hook", "json://hooks.example/x/${{ secrets.TOKEN }}"],
        }
    ]


def test_on_defaults_to_failed_and_single_values_need_no_list():
    loaded = load("name: n\nnotify:\n  - urls: json://127.0.0.1/x\n" + STEPS)
    assert loaded.workflow.notify[0].on == [NotifyEvent.FAILED]
    assert loaded.workflow.notify[0].urls == ["json://127.0.0.1/x"]
    loaded = load("name: n\nnotify:\n  - {on: succeeded, urls: json://127.0.0.1/x}\n" + STEPS)
    assert loaded.workflow.notify[0].on == [NotifyEvent.SUCCEEDED]


def test_a_url_that_is_a_secret_as_a_whole_is_accepted_unchecked():
    load("name: n\nsecrets: [TEAMS_URL]\nnotify:\n  - urls: ['${{ secrets.TEAMS_URL }}']\n" + STEPS)


def test_without_notify_the_snapshot_has_no_rules():
    assert build_snapshot(load("name: n\n" + STEPS), {})["notify"] == []


# ---------------------------------------------------------------- refused, with FILE:LINE


@pytest.mark.parametrize(
    ("notify", "line", "path", "fragment"),
    [
        (
            "  - on: [failed, awaiting_aproval]\n    urls: json://h/x\n",
            4,
            "notify[0].on[1]",
            "unknown event 'awaiting_aproval' (did you mean 'awaiting_approval'?); notify "
            "can be on: started, succeeded, failed, cancelled, skipped, awaiting_approval, "
            "awaiting_decision, step_failed",
        ),
        (
            "  - on: []\n    urls: json://h/x\n",
            4,
            "notify[0].on",
            "at least 1 item",
        ),
        ("  - on: [failed]\n", 4, "notify[0]", "missing required key 'urls'"),
        (
            "  - url: json://h/x\n",
            4,
            "notify[0]",
            "unknown key 'url' (did you mean 'urls'?)",
        ),
        ("  - urls: []\n", 4, "notify[0].urls", "at least 1 item"),
        (
            "  - urls:\n      - json://h/x\n      - slak://T/B/C\n",
            6,
            "notify[0].urls[1]",
            "unknown notification service slak:// (did you mean slack://?)",
        ),
        (
            "  - urls: https://hooks.example/x\n",
            4,
            "notify[0].urls[0]",
            "https:// is no notification service: for a webhook write json://HOST/PATH",
        ),
        (
            "  - urls: [slack://T1/B2]\n",
            4,
            "notify[0].urls[0]",
            "apprise cannot use this slack:// URL: An invalid Slack (third) Token",
        ),
        (
            "  - urls: [hooks.example/x]\n",
            4,
            "notify[0].urls[0]",
            "not a notification URL: write SERVICE://",
        ),
        (
            "  - urls: ['json://h/${{ params.channel }}']\n",
            4,
            "notify[0].urls[0]",
            "a notify URL may only use ${{ secrets.NAME }}",
        ),
        (
            "  - urls: ['json://h/${{ secrets.T']\n",
            4,
            "notify[0].urls[0]",
            "unterminated ${{",
        ),
        (
            "  - urls:\n      - json://h/x\n      - 'json://h/${{ secrets.HOOK }}'\n",
            6,
            "notify[0].urls[1]",
            "${{ secrets.HOOK }}: HOOK is not listed under secrets:; add it (secrets: [HOOK])",
        ),
        ("  - urls: json://h/x\n    on: {failed: true}\n", 5, "notify[0].on", "list"),
    ],
)
def test_malformed_rules_are_refused_at_their_line(notify, line, path, fragment):
    text = "name: n\nsecrets: [OTHER]\nnotify:\n" + notify + STEPS
    found = problems_of(text)
    expected_start = f"wf.yaml:{line}: {path}: "
    matching = [p for p in found if p.startswith(expected_start) and fragment in p]
    assert matching, found


def test_every_problem_of_every_rule_is_reported_at_once():
    found = problems_of(
        "name: n\nnotify:\n  - on: [nope]\n    urls: [slak://x]\n  - urls: [https://x]\n" + STEPS
    )
    assert [p.split(": ")[1] for p in found] == [
        "notify[0].on[0]",
        "notify[0].urls[0]",
        "notify[1].urls[0]",
    ]


def test_checking_urls_needs_no_network_and_keeps_apprise_quiet(capsys):
    # 203.0.113.0/24 is reserved for documentation: nothing there would answer
    assert url_problem("json://203.0.113.7:9/x") is None
    assert url_problem("mailtos://user:pw@203.0.113.7?to=a@example.com") is None
    assert url_problem("slack://T1/B2") is not None
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


# ---------------------------------------------------------------- secrets


def test_secrets_are_filled_in_encoded_inside_a_url_and_raw_as_a_whole():
    env = {"T": "a/b?c&d e", "URL": "json://h/x?y=1"}
    inside = resolve("json://h/${{ secrets.T }}?k=${{secrets.T}}", env)
    assert inside.url == "json://h/a%2Fb%3Fc%26d%20e?k=a%2Fb%3Fc%26d%20e"
    assert inside.secrets == ("a/b?c&d e", "a/b?c&d e")
    whole = resolve("${{ secrets.URL }}", env)
    assert whole.url == "json://h/x?y=1" and whole.secrets == ("json://h/x?y=1",)


@pytest.mark.parametrize("env", [{}, {"T": ""}])
def test_a_secret_that_is_not_set_is_an_error_naming_it(env):
    with pytest.raises(MissingSecret) as info:
        resolve("json://h/${{ secrets.T }}", env)
    assert info.value.name == "T" and "secret T is not set" in str(info.value)


def test_the_mask_hides_secrets_however_encoded_and_url_passwords():
    mask = masker(["a/b c&d"])
    text = (
        "raw a/b c&d, quoted a%2Fb%20c%26d, partly a%2fb+c&d (a path as apprise writes it); "
        "redis://:hunter2@h:6379/0"
    )
    assert mask(text) == "raw ***, quoted ***, partly *** (a path as apprise writes it); " + (
        "redis://:***@h:6379/0"
    )


# ---------------------------------------------------------------- the message


def _failed_record(stderr: list[str]) -> RunRecord:
    steps = {
        "ok": StepRecord(status="succeeded", exit_code=0),
        "build": StepRecord(
            status="failed", exit_code=3, reason="exit_code", attempts=2, stderr_tail=stderr
        ),
        "lint": StepRecord(status="failed", exit_code=1, reason="exit_code", allowed_failure=True),
        "deploy": StepRecord(status="skipped"),
    }
    return RunRecord(
        id="r1",
        workflow="wf",
        status="failed",
        params={},
        steps=steps,
        created_at="2026-01-01T00:00:00.000Z",
        started_at="2026-01-01T00:00:01.000Z",
        finished_at="2026-01-01T00:00:13.500Z",
    )


def test_a_failure_message_names_the_run_and_each_failed_step_with_its_stderr():
    event = {"type": "workflow_failed", "run_id": "r1", "workflow": "wf"}
    record = _failed_record(["compiling", "error: token=S3CRET rejected"])
    message = compose(
        NotifyEvent.FAILED,
        event,
        record,
        flower_url="https://flower.example/base",
        mask=masker(["S3CRET"]),
    )
    assert message.kind == "failure"
    assert message.title == "wf: failed (run r1)"
    assert message.body.splitlines() == [
        "The run r1 of workflow wf failed.",
        "Duration: 12.5 s",
        "",
        "Failed step build: exit code 3, reason exit_code, 2 attempts",
        "  stderr (last 2 lines):",
        "    compiling",
        "    error: token=*** rejected",
        "",
        "Run page: https://flower.example/base/runs/r1",
    ]


def test_an_approval_message_says_how_to_answer_it():
    record = RunRecord(
        id="r2",
        workflow="wf",
        status="running",
        params={},
        steps={
            "release": StepRecord(
                status="awaiting_approval", control={"approval_prompt": "Release to prod?"}
            )
        },
    )
    event = {"type": "step_awaiting_approval", "run_id": "r2", "workflow": "wf", "step": "release"}
    message = compose(
        NotifyEvent.AWAITING_APPROVAL, event, record, flower_url=None, mask=masker([])
    )
    assert message.kind == "warning"
    assert message.title == "wf: step release awaits approval (run r2)"
    assert message.body.splitlines() == [
        "Step release of run r2 of workflow wf awaits approval: Release to prod?",
        "Approve: runbook-celery approve r2 release",
        "Reject:  runbook-celery reject r2 release",
    ]


def test_a_message_for_an_expired_run_tells_what_the_event_says():
    event = {"type": "step_failed", "run_id": "r3", "workflow": "wf", "step": "a"}
    event |= {"exit_code": "7", "reason": "timeout"}
    message = compose(NotifyEvent.STEP_FAILED, event, None, flower_url=None, mask=masker([]))
    assert message.title == "wf: step a failed (run r3)"
    assert message.body == "Step a of run r3 of workflow wf failed: exit code 7, reason timeout."


def test_a_decision_message_gives_the_failure_and_the_commands():
    record = _failed_record(["boom"])
    event = {"type": "step_awaiting_decision", "run_id": "r1", "workflow": "wf"}
    event |= {"step": "build", "exit_code": "3"}
    message = compose(
        NotifyEvent.AWAITING_DECISION, event, record, flower_url=None, mask=masker([])
    )
    assert message.body.splitlines() == [
        "Step build of run r1 of workflow wf failed (exit code 3, reason exit_code, 2 attempts)"
        " and awaits a decision.",
        "  stderr (last 1 line):",
        "    boom",
        "",
        "Retry: runbook-celery retry r1 build",
        "Skip:  runbook-celery skip r1 build",
        "Fail the run: runbook-celery abort r1",
    ]


def test_a_huge_stderr_is_cut_to_a_bounded_message():
    record = _failed_record(["x" * 10_000] * 50)
    event = {"type": "workflow_failed", "run_id": "r1", "workflow": "wf"}
    message = compose(NotifyEvent.FAILED, event, record, flower_url=None, mask=masker([]))
    assert len(message.body) <= BODY_CHARS
    assert message.body.count("  stderr (last 10 lines):") == 1


# ---------------------------------------------------------------- vocabulary, settings


def test_every_notify_event_stands_for_a_recorded_event_type():
    assert set(NOTIFY_EVENT_OF.values()) == set(NotifyEvent)
    assert set(NOTIFY_EVENT_OF) <= set(EventType)


@pytest.mark.parametrize("name", [e.value for e in NotifyEvent])
def test_the_readme_lists_every_notify_event(name):
    section = README.split("## Notifications", 1)[1].split("\n## ", 1)[0]
    assert f"`{name}`" in section


def test_flower_url_and_worker_notifier_settings_are_checked():
    settings = Settings.from_env(
        {"RUNBOOK_FLOWER_URL": "https://f.example/x/", "RUNBOOK_WORKER_NOTIFIER": "off"}
    )
    assert settings.flower_url == "https://f.example/x"
    assert settings.worker_notifier is False
    assert Settings.from_env({}).worker_notifier is True
    with pytest.raises(InvalidSetting) as info:
        Settings.from_env({"RUNBOOK_FLOWER_URL": "flower:5555", "RUNBOOK_WORKER_NOTIFIER": "2"})
    text = str(info.value)
    assert re.search(r"RUNBOOK_FLOWER_URL='flower:5555': not an http:// or https:// URL", text)
    assert "RUNBOOK_WORKER_NOTIFIER='2': not a yes/no value" in text
