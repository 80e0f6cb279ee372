"""The JSON API under /api/runs against a real Flower, worker and Redis: every endpoint,
its auth and its errors (4xx with a JSON error, never a 500)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, wait_for_event
from observe_helpers import free_port
from tornado.web import create_signed_value
from web_helpers import USER, WebFlower, web_flower
from web_workflows import write_definitions

from runbook_celery import get_run
from runbook_celery.client.run import Run
from runbook_celery.core.settings import get_settings
from runbook_celery.store import RunStore
from runbook_celery.store.redisconn import get_client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def defs(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return write_definitions(tmp_path_factory.mktemp("defs"))


@pytest.fixture(scope="module")
def fl(worker, defs, tmp_path_factory) -> Iterator[WebFlower]:  # type: ignore[no-untyped-def]
    with web_flower(tmp_path_factory.mktemp("logs"), f"--definitions={defs}") as server:
        yield server


def trigger(fl: WebFlower, workflow: str, **params: str) -> str:
    resp = fl.request("POST", "/api/runs", {"workflow": workflow, "params": params})
    assert resp.status == 201, resp.text
    return str(resp.json["id"])


def wait_end(run_id: str) -> dict[str, Any]:
    return Run(run_id).wait(timeout=60).to_dict()


def store_for_tests() -> RunStore:
    settings = get_settings()
    return RunStore(get_client(settings), settings.prefix, settings.retention)


def events_of(store, run_id: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return [f for _, f in store.events(run_id)]


# ------------------------------------------------------------------ auth


def test_every_endpoint_asks_for_the_login(fl):
    run_id = trigger(fl, "web-failing")
    wait_end(run_id)
    endpoints = [
        ("GET", "/api/runs"),
        ("POST", "/api/runs"),
        ("GET", f"/api/runs/{run_id}"),
        ("GET", f"/api/runs/{run_id}/events"),
        *[
            ("POST", f"/api/runs/{run_id}/{a}")
            for a in ("cancel", "pause", "resume", "rerun", "abort")
        ],
        *[
            ("POST", f"/api/runs/{run_id}/steps/test/{a}")
            for a in ("approve", "reject", "retry", "skip")
        ],
    ]
    for method, path in endpoints:
        body = {} if method == "POST" else None
        anonymous = fl.request(method, path, body, auth=False)
        assert anonymous.status == 401, (path, anonymous.text)
        assert anonymous.headers["www-authenticate"] == 'Basic realm="flower"'
        wrong = fl.request(
            method, path, body, auth=False, headers={"Authorization": "Basic Ym9iOm5v"}
        )
        assert wrong.status == 401, (path, wrong.text)
    assert fl.request("GET", "/runs", auth=False).status == 401  # the pages too
    assert get_run(run_id).status == "failed"  # nothing was changed by those attempts


# ------------------------------------------------------------------ reading


def test_trigger_gives_201_and_a_run_in_the_shape_of_status_json(fl):
    resp = fl.request("POST", "/api/runs", {"workflow": "web-failing", "params": {"who": "api"}})
    assert resp.status == 201
    run_id = resp.json["id"]
    assert resp.json["url"] == f"/runs/{run_id}"
    assert resp.headers["location"] == f"/api/runs/{run_id}"
    wait_end(run_id)
    got = fl.request("GET", f"/api/runs/{run_id}")
    assert got.status == 200
    cli = run_cli("status", run_id, "--json")
    assert got.json == json.loads(cli.stdout)
    assert got.json["params"] == {"who": "api", "target": "staging"}  # target: its default
    assert got.json["control"]["triggered_by"] == USER
    assert got.json["steps"]["test"]["stderr_tail"] == ["FAIL: test_login"]
    assert got.json["steps"]["deploy"]["status"] == "skipped"


def test_list_is_newest_first_filtered_paged_and_counted(fl):
    ids = [trigger(fl, "web-gated") for _ in range(3)]
    for run_id in ids:
        Run(run_id).cancel()
        wait_end(run_id)
    listed = fl.request("GET", "/api/runs?workflow=web-gated&status=cancelled&limit=2")
    assert listed.status == 200
    assert listed.json["total"] >= 3
    assert [r["id"] for r in listed.json["runs"]] == ids[::-1][:2]
    assert all(r["status"] == "cancelled" and "steps" in r for r in listed.json["runs"])
    second = fl.request("GET", "/api/runs?workflow=web-gated&status=cancelled&limit=2&offset=1")
    assert second.json["runs"][0]["id"] == ids[1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=bogus", "unknown status"),
        ("limit=0", "limit must be between"),
        ("limit=201", "limit must be between"),
        ("limit=ten", "limit must be a whole number"),
        ("offset=-1", "offset must be between"),
    ],
)
def test_list_refuses_bad_queries(fl, query, message):
    resp = fl.request("GET", f"/api/runs?{query}")
    assert resp.status == 400
    assert message in resp.json["error"]


def test_unknown_runs_steps_and_endpoints_are_json_404s(fl):
    run_id = trigger(fl, "web-failing")
    wait_end(run_id)
    for method, path in [
        ("GET", "/api/runs/0123456789abcdef"),
        ("GET", "/api/runs/not:a:run"),
        ("GET", f"/api/runs/{run_id}/bogus"),
        ("POST", f"/api/runs/{run_id}/steps/nope/approve"),
        ("POST", "/api/runs/0123456789abcdef/cancel"),
        ("GET", "/api/runs/0123456789abcdef/events"),
    ]:
        resp = fl.request(method, path, {} if method == "POST" else None)
        assert resp.status == 404, (path, resp.text)
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json["error"]


# ------------------------------------------------------------------ triggering


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"raw": b"{not json"}, 400, "not valid JSON"),
        ({"raw": b"[1, 2]"}, 400, "must be a JSON object"),
        ({"body": {}}, 400, "workflow"),
        ({"body": {"workflow": 7}}, 400, "workflow"),
        ({"body": {"workflow": "web-failing", "params": [1]}}, 400, "params must be an object"),
        ({"body": {"workflow": "web-failing", "params": {"nope": "1"}}}, 400, "unknown param"),
        ({"body": {"workflow": "web-failing", "params": {"who": None}}}, 400, "must be a string"),
        ({"body": {"workflow": "web-failing", "extra": 1}}, 400, "unknown field"),
        ({"body": {"workflow": "no-such-workflow"}}, 404, "no valid workflow"),
        ({"body": {"workflow": "web-broken"}}, 404, "no valid workflow"),
        (
            {"raw": b'{"workflow": "web-failing"}', "headers": {"Content-Type": "text/plain"}},
            415,
            "JSON",
        ),
        (
            {"body": {"workflow": "web-failing"}, "headers": {"Sec-Fetch-Site": "cross-site"}},
            403,
            "cross-site",
        ),
        (
            {"body": {"workflow": "web-failing"}, "headers": {"Origin": "http://evil.example"}},
            403,
            "cross-origin",
        ),
    ],
)
def test_trigger_refuses_bad_input_with_a_json_error(fl, kwargs, status, message):
    before = fl.request("GET", "/api/runs?limit=1").json["total"]
    resp = fl.request(
        "POST",
        "/api/runs",
        kwargs.get("body"),
        raw=kwargs.get("raw"),
        headers=kwargs.get("headers"),
    )
    assert resp.status == status, resp.text
    assert message in resp.json["error"]
    assert fl.request("GET", "/api/runs?limit=1").json["total"] == before  # nothing started


# ------------------------------------------------------------------ control, with `by`


def test_approve_and_reject_record_the_user(fl, store):
    approved, rejected = trigger(fl, "web-gated"), trigger(fl, "web-gated")
    for run_id in (approved, rejected):
        wait_for_event(store, run_id, "step_awaiting_approval", "release")
    resp = fl.request("POST", f"/api/runs/{approved}/steps/release/approve", {})
    assert resp.status == 200, resp.text
    assert resp.json["steps"]["release"]["control"]["approved_by"] == USER
    assert wait_end(approved)["status"] == "succeeded"
    again = fl.request("POST", f"/api/runs/{approved}/steps/release/approve", {})
    assert again.status == 409 and "not awaiting approval" in again.json["error"]

    assert fl.request("POST", f"/api/runs/{rejected}/steps/release/reject").status == 200
    final = wait_end(rejected)
    assert final["status"] == "failed" and final["steps"]["release"]["reason"] == "rejected"
    for run_id, etype in ((approved, "step_approved"), (rejected, "step_rejected")):
        event = next(e for e in events_of(store, run_id) if e["type"] == etype)
        assert event["by"] == USER


def test_decisions_retry_skip_and_abort_record_the_user(fl, store):
    retried, skipped, aborted = (trigger(fl, "web-decide") for _ in range(3))
    for run_id in (retried, skipped, aborted):
        wait_for_event(store, run_id, "step_awaiting_decision", "migrate")

    bad = fl.request("POST", f"/api/runs/{retried}/steps/migrate/retry", {"env": {"1BAD": "x"}})
    assert bad.status == 400 and "environment variable name" in bad.json["error"]
    bad = fl.request("POST", f"/api/runs/{retried}/steps/migrate/retry", {"env": {"FIX": 1}})
    assert bad.status == 400
    ok = fl.request("POST", f"/api/runs/{retried}/steps/migrate/retry", {"env": {"FIX": "1"}})
    assert ok.status == 200, ok.text
    assert wait_end(retried)["status"] == "succeeded"

    ok = fl.request(
        "POST", f"/api/runs/{skipped}/steps/migrate/skip", {"outputs": {"version": "42"}}
    )
    assert ok.status == 200, ok.text
    final = wait_end(skipped)
    assert final["status"] == "succeeded" and final["steps"]["migrate"]["status"] == "skipped"

    assert fl.request("POST", f"/api/runs/{aborted}/abort").status == 200
    assert wait_end(aborted)["status"] == "failed"
    again = fl.request("POST", f"/api/runs/{aborted}/abort")
    assert again.status == 409

    for run_id, etype in (
        (retried, "step_decision_retry"),
        (skipped, "step_decision_skip"),
        (aborted, "step_decision_abort"),
    ):
        event = next(e for e in events_of(store, run_id) if e["type"] == etype)
        assert event["by"] == USER


def test_pause_resume_and_cancel_record_the_user(fl, store, tmp_path):
    gate = tmp_path / "go"
    run_id = trigger(fl, "web-hold", gate=str(gate))
    wait_for_event(store, run_id, "step_started", "wait")
    assert fl.request("POST", f"/api/runs/{run_id}/pause", {"x": 1}).status == 400  # no body
    paused = fl.request("POST", f"/api/runs/{run_id}/pause")
    assert paused.status == 200 and paused.json["status"] == "paused"
    assert paused.json["control"]["paused_by"] == USER
    resumed = fl.request("POST", f"/api/runs/{run_id}/resume")
    assert resumed.status == 200 and resumed.json["control"]["resumed_by"] == USER
    cancelled = fl.request("POST", f"/api/runs/{run_id}/cancel")
    assert cancelled.status == 200, cancelled.text
    final = wait_end(run_id)
    assert final["status"] == "cancelled"
    assert final["control"]["cancelled_by"] == USER
    event = next(e for e in events_of(store, run_id) if e["type"] == "workflow_cancelling")
    assert event["by"] == USER
    assert fl.request("POST", f"/api/runs/{run_id}/cancel").status == 409
    assert fl.request("POST", f"/api/runs/{run_id}/pause").status == 409


def test_rerun_from_failed_gives_201_and_a_linked_run(fl):
    run_id = trigger(fl, "web-failing")
    wait_end(run_id)
    for body, message in (
        ({"from_failed": "yes"}, "from_failed must be true or false"),
        ({"from_step": ""}, "from_step must be a step id"),
        ({"from_failed": True, "from_step": "test"}, "not both"),
        ({"bogus": 1}, "unknown field"),
    ):
        resp = fl.request("POST", f"/api/runs/{run_id}/rerun", body)
        assert resp.status == 400 and message in resp.json["error"]
    unknown = fl.request("POST", f"/api/runs/{run_id}/rerun", {"from_step": "nope"})
    assert unknown.status == 409 and "no step 'nope'" in unknown.json["error"]
    resp = fl.request("POST", f"/api/runs/{run_id}/rerun", {"from_failed": True})
    assert resp.status == 201, resp.text
    new = resp.json["id"]
    final = wait_end(new)
    assert final["rerun_of"] == run_id
    assert final["control"]["triggered_by"] == USER
    assert final["steps"]["build"]["reused"] is True
    assert final["steps"]["test"]["attempts"] == 1


# ------------------------------------------------------------------ events


def test_event_stream_replays_resumes_with_last_event_id_and_ends(fl, store):
    run_id = trigger(fl, "web-failing")
    wait_end(run_id)
    stored = store.events(run_id)
    got = fl.events(f"/api/runs/{run_id}/events")
    assert got[-1]["event"] == "end"
    assert [m["id"] for m in got[:-1]] == [eid for eid, _ in stored]
    assert [m["event"] for m in got[:-1]] == [f["type"] for _, f in stored]
    assert json.loads(got[0]["data"])["run_id"] == run_id
    resumed = fl.events(f"/api/runs/{run_id}/events", {"Last-Event-ID": stored[2][0]})
    assert [m["id"] for m in resumed[:-1]] == [eid for eid, _ in stored[3:]]
    bad = fl.request("GET", f"/api/runs/{run_id}/events", headers={"Last-Event-ID": "x; DROP"})
    assert bad.status == 400 and "not an event id" in bad.json["error"]


def test_event_stream_follows_a_live_run(fl, store, tmp_path):
    gate = tmp_path / "go"
    run_id = trigger(fl, "web-hold", gate=str(gate))
    wait_for_event(store, run_id, "step_started", "wait")
    gate.touch()
    got = fl.events(f"/api/runs/{run_id}/events")
    types = [m["event"] for m in got]
    assert types[-2:] == ["workflow_succeeded", "end"]
    assert "step_succeeded" in types


# ------------------------------------------------------------------ Flower's rule without login


def test_without_a_login_the_api_and_controls_follow_flowers_rule(worker, defs, tmp_path):
    with web_flower(tmp_path, f"--definitions={defs}", auth=None) as closed:
        resp = closed.request("GET", "/api/runs")
        assert resp.status == 401 and "FLOWER_UNAUTHENTICATED_API" in resp.json["error"]
        resp = closed.request("POST", "/api/runs", {"workflow": "web-failing"})
        assert resp.status == 401
        page = closed.request("GET", "/runs/new")
        assert page.status == 200  # pages are open, as Flower's are
        assert "Controls are off" in page.text and "FLOWER_UNAUTHENTICATED_API=true" in page.text
    env = {"FLOWER_UNAUTHENTICATED_API": "true"}
    with web_flower(tmp_path, f"--definitions={defs}", auth=None, env=env) as opened:
        resp = opened.request("POST", "/api/runs", {"workflow": "web-failing"})
        assert resp.status == 201
        assert wait_end(resp.json["id"])["control"]["triggered_by"] == "anonymous"
        assert "access-control-allow-origin" not in resp.headers  # no cross-origin use


def test_read_only_flower_refuses_every_action(worker, defs, tmp_path):
    with web_flower(tmp_path, f"--definitions={defs}", "--read_only=true") as ro:
        assert ro.request("GET", "/api/runs").status == 200
        resp = ro.request("POST", "/api/runs", {"workflow": "web-failing"})
        assert resp.status == 403 and "--read_only" in resp.json["error"]


def test_url_prefix_applies_to_pages_api_static_and_the_navbar(fl, defs, tmp_path):
    earlier = trigger(fl, "web-failing")  # through another Flower process
    wait_end(earlier)
    with web_flower(tmp_path, f"--definitions={defs}", "--url_prefix=ops/flower") as pf:
        # a Flower started later lists it: the history is Redis's, not Flower's memory
        assert f'href="/ops/flower/runs/{earlier}"' in pf.request("GET", "/ops/flower/runs").text
        resp = pf.request("POST", "/ops/flower/api/runs", {"workflow": "web-failing"})
        assert resp.status == 201, resp.text
        run_id = resp.json["id"]
        assert resp.json["url"] == f"/ops/flower/runs/{run_id}"
        assert resp.headers["location"] == f"/ops/flower/api/runs/{run_id}"
        wait_end(run_id)
        listed = pf.request("GET", "/ops/flower/runs")
        assert listed.status == 200
        assert f'href="/ops/flower/runs/{run_id}"' in listed.text
        assert 'href="/ops/flower/runs"' in listed.text  # the navbar's Runs tab
        assert 'href="/ops/flower/runbook-static/runbook.css?v=' in listed.text
        page = pf.request("GET", f"/ops/flower/runs/{run_id}")
        assert f'data-live="/ops/flower/runs/{run_id}/live"' in page.text
        assert f'href="/ops/flower/task/{run_id}.test"' in page.text
        assert pf.request("GET", "/ops/flower/runbook-static/runbook.js").status == 200
        assert pf.request("GET", f"/ops/flower/api/runs/{run_id}").json["status"] == "failed"
        assert pf.request("GET", "/runs").status == 404


def test_oauth_email_is_the_by_and_browser_sessions_need_the_xsrf_token(worker, defs, tmp_path):
    secret = "web-test-cookie-secret"
    args = (f"--definitions={defs}", "--auth=.*@example.com", f"--cookie_secret={secret}")
    with web_flower(tmp_path, *args, auth=None) as oa:

        def session(email: str) -> dict[str, str]:
            signed = create_signed_value(secret, "user", email).decode()
            return {"Cookie": f"user={signed}; _xsrf=deadbeef"}

        carol = session("carol@example.com")
        assert oa.request("GET", "/api/runs").status == 401  # no session
        assert oa.request("GET", "/api/runs", headers=session("mallory@evil.test")).status == 401
        assert oa.request("GET", "/api/runs", headers=carol).status == 200
        body = {"workflow": "web-gated"}
        refused = oa.request("POST", "/api/runs", body, headers=carol)
        assert refused.status == 403 and "_xsrf" in refused.json["error"]
        with_token = {**carol, "X-XSRFToken": "deadbeef"}
        resp = oa.request("POST", "/api/runs", body, headers=with_token)
        assert resp.status == 201, resp.text
        run_id = resp.json["id"]
        wait_for_event(store_for_tests(), run_id, "step_awaiting_approval", "release")
        path = f"/api/runs/{run_id}/steps/release/approve"
        assert oa.request("POST", path, {}, headers=with_token).status == 200
        final = wait_end(run_id)
        assert final["control"]["triggered_by"] == "carol@example.com"
        assert final["steps"]["release"]["control"]["approved_by"] == "carol@example.com"


def test_redis_down_is_a_503_with_the_reason_never_a_500(defs, tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {"RUNBOOK_REDIS_URL": dead, "RUNBOOK_BROKER_URL": dead}
    with web_flower(tmp_path, f"--definitions={defs}", env=env) as down:
        for path in (
            "/api/runs",
            "/api/runs/0123456789abcdef",
            "/api/runs/0123456789abcdef/events",
        ):
            resp = down.request("GET", path)
            assert resp.status == 503, (path, resp.text)
            assert re.search(r"unreachable|[Cc]onnect", resp.json["error"]), resp.text
        resp = down.request("POST", "/api/runs/0123456789abcdef/pause")
        assert resp.status == 503 and re.search(r"unreachable|[Cc]onnect", resp.json["error"])
        for path in ("/runs", "/runs/0123456789abcdef", "/runs/0123456789abcdef/events"):
            assert down.request("GET", path).status == 503, path
