"""The web layer's pure parts: DAG layout, what a step waits for, the navbar tab, paging.

Fast: no Flower process, no worker (history paging and the cancel author run on fakeredis).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import fakeredis
import flower
import pytest

from runbook_celery.plan.runrecord import RunRecord, StepRecord
from runbook_celery.store import RunStore
from runbook_celery.store.history import page_runs
from runbook_celery.web.dag import NODE_H, NODE_W, Node, layout, needs_items, svg
from runbook_celery.web.server import with_runs_tab
from runbook_celery.web.view import printable, run_view, waiting_for

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def _snapshot(needs: dict[str, list[str]], **extra) -> dict:  # type: ignore[no-untyped-def]
    steps = [{"id": s, "needs": n, **extra.get(s, {})} for s, n in needs.items()]
    return {"workflow": "wf", "steps": steps, "params": {}, "mode": "dynamic"}


def _record(status: str, steps: dict[str, str], **control: str) -> RunRecord:
    return RunRecord(
        id="r1",
        workflow="wf",
        status=status,
        params={},
        steps={sid: StepRecord(status=st) for sid, st in steps.items()},
        control=dict(control),
    )


# ------------------------------------------------------------------ DAG


def test_layout_puts_every_step_right_of_what_it_needs_without_overlaps():
    needs = {**DIAMOND, "e": ["a", "d"], "f": []}
    lay = layout(needs_items(needs))
    for step, deps in needs.items():
        for dep in deps:
            assert lay.pos[dep][0] + NODE_W < lay.pos[step][0]
    boxes = list(lay.pos.values())
    for i, (x1, y1) in enumerate(boxes):
        for x2, y2 in boxes[i + 1 :]:
            assert abs(x1 - x2) >= NODE_W or abs(y1 - y2) >= NODE_H
    assert lay.layer == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 3, "f": 0}


def test_svg_draws_one_edge_per_need_and_paints_each_node_by_status():
    drawing = svg(DIAMOND, {"a": Node("succeeded"), "b": Node("failed"), "d": Node("skipped")})
    edges = re.findall(r'data-from="(\w)" data-to="(\w)"', drawing)
    assert sorted(edges) == [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    status = dict(re.findall(r'data-step="(\w)" data-status="(\w+)"', drawing))
    assert status == {"a": "succeeded", "b": "failed", "c": "pending", "d": "skipped"}


def test_fanned_out_step_is_one_node_with_its_instance_counts():
    drawing = svg(
        {"list": [], "work": ["list"]}, {"work": Node("running", {"succeeded": 7, "running": 3})}
    )
    assert drawing.count('data-step="work"') == 1
    assert "running · 7/10" in drawing
    assert "7 succeeded, 3 running" in drawing  # the node's tooltip


def test_step_ids_and_statuses_are_escaped_in_the_svg():
    drawing = svg({"<b>x</b>": []}, {"<b>x</b>": Node('"><script>')})
    assert "<script>" not in drawing and "<b>x</b>" not in drawing
    assert "rb-st-other" in drawing


def test_layout_of_500_steps_is_fast():
    needs = {f"s{i}": [f"s{i - 1}"] if i % 50 else [] for i in range(500)}
    lay = layout(needs_items(needs))
    assert len(lay.pos) == 500


# ------------------------------------------------------------------ waiting for what


def test_a_pending_step_waits_for_a_worker_once_its_needs_are_done_else_for_them():
    needs = {"a": [], "b": ["a"], "c": ["b"]}
    record = _record("running", {"a": "succeeded", "b": "pending", "c": "pending"})
    assert (
        waiting_for("b", None, record.steps["b"], record, {}, needs) == "a worker (queue runbook)"
    )
    assert waiting_for("c", None, record.steps["c"], record, {}, needs) == "dependencies: b"
    gpu = waiting_for("b", None, record.steps["b"], record, {"queue": "gpu"}, needs)
    assert gpu == "a worker (queue gpu)"


def test_approval_decision_slot_pause_and_concurrency_are_told_apart():
    needs = {"a": []}

    def why(run_status: str, step_status: str, **control: str) -> str | None:
        record = _record(run_status, {"a": step_status}, **control)
        return waiting_for("a", None, record.steps["a"], record, {}, needs)

    assert why("running", "awaiting_approval") == "an approval"
    assert why("awaiting_decision", "awaiting_decision") == "a decision: retry, skip or abort"
    assert why("running", "waiting") == "a free slot: max_active_steps reached"
    assert why("paused", "waiting") == "the run to be resumed (paused)"
    assert why("queued", "pending", cgroup="deploy-prod") == (
        "a concurrency slot in group 'deploy-prod'"
    )
    assert why("failed", "pending") is None  # an ended run waits for nothing


def test_run_view_groups_instances_under_their_step_with_matrix_values():
    snapshot = _snapshot({"t": []}, t={"matrix": {"py": ["3.11", "3.12"]}})
    steps = {
        "t": StepRecord(status="running", attempts=0),
        "t[1]": StepRecord(status="running", attempts=1, values={"matrix": {"py": "3.12"}}),
        "t[0]": StepRecord(status="succeeded", attempts=1, values={"matrix": {"py": "3.11"}}),
    }
    record = RunRecord(id="r", workflow="wf", status="running", params={}, steps=steps)
    view = run_view(record, snapshot)
    assert [(r.id, r.parent) for r in view.rows] == [("t", None), ("t[0]", "t"), ("t[1]", "t")]
    assert view.rows[0].instances == {"running": 1, "succeeded": 1}
    assert view.rows[2].values == [("py", "3.12")]
    assert view.rows[1].task_id == "r.t[0]"  # each instance links its Celery task


def test_terminal_escapes_in_output_are_shown_as_text():
    assert printable("ok\x1b]52;c;evil\x07") == "ok\\x1b]52;c;evil\\x07"


# ------------------------------------------------------------------ navbar


def test_runs_tab_is_added_to_flowers_own_navbar_after_broker():
    navbar = (Path(flower.__file__).parent / "templates" / "navbar.html").read_text()
    with_tab = with_runs_tab(navbar)
    assert with_tab.count(">Runs<") == 1
    assert "reverse_url('runbook_runs')" in with_tab
    assert "active_tab == 'runs'" in with_tab
    assert with_tab.index(">Broker<") < with_tab.index(">Runs<")
    assert with_runs_tab("<nav>no broker</nav>") == "<nav>no broker</nav>"


# ------------------------------------------------------------------ history paging


@pytest.fixture
def fake_store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(), prefix="webunit")


def _seed(store: RunStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        run_id = f"run{i:03d}"
        snapshot = _snapshot({"a": []})
        snapshot["workflow"] = "even" if i % 2 == 0 else "odd"
        store.create_run(run_id, snapshot, "sha")
        store.r.zadd(store.keys.runs_index, {run_id: 1000 + i})  # creation order
        store.r.hset(store.keys.run(run_id), "status", "failed" if i % 3 == 0 else "succeeded")
        ids.append(run_id)
    return ids


def test_page_runs_pages_newest_first_with_the_total(fake_store):
    _seed(fake_store, 25)
    first = page_runs(fake_store, offset=0, limit=10)
    assert first.total == 25
    assert [r.id for r in first.runs] == [f"run{i:03d}" for i in range(24, 14, -1)]
    last = page_runs(fake_store, offset=20, limit=10)
    assert [r.id for r in last.runs] == [f"run{i:03d}" for i in range(4, -1, -1)]


def test_page_runs_filters_by_workflow_and_status_and_counts_the_matches(fake_store):
    _seed(fake_store, 25)
    found = page_runs(fake_store, workflow="even", status="failed", offset=0, limit=2)
    expected = [f"run{i:03d}" for i in range(24, -1, -1) if i % 2 == 0 and i % 3 == 0]
    assert found.total == len(expected) == 5
    assert [r.id for r in found.runs] == expected[:2]


def test_page_runs_drops_expired_runs_from_the_index(fake_store):
    _seed(fake_store, 5)
    fake_store.r.delete(fake_store.keys.run("run004"))  # expired
    found = page_runs(fake_store, offset=0, limit=10)
    assert [r.id for r in found.runs] == ["run003", "run002", "run001", "run000"]
    assert found.total == 4
    assert fake_store.r.zscore(fake_store.keys.runs_index, "run004") is None


def test_cancel_records_who_asked(fake_store):
    fake_store.create_run("c1", _snapshot({"a": []}), "sha")
    fake_store.cancel_run("c1", by="alice@example.com")
    record = fake_store.get_run("c1")
    assert record.control["cancelled_by"] == "alice@example.com"
    events = [f for _, f in fake_store.events("c1")]
    cancelling = next(e for e in events if e["type"] == "workflow_cancelling")
    assert cancelling["by"] == "alice@example.com"
    assert (
        json.loads(json.dumps(record.to_dict()))["control"]["cancelled_by"] == "alice@example.com"
    )


def test_filtering_reads_only_runs_still_going_once_ended_ones_are_known(fake_store):
    from runbook_celery.store.history import EndedRuns

    _seed(fake_store, 6)
    now = datetime.now(UTC)
    for run_id in ("run000", "run001", "run002", "run003", "run004"):
        fake_store.r.hset(fake_store.keys.run(run_id), "finished_at", now.isoformat())
    fake_store.r.hset(fake_store.keys.run("run005"), "status", "running")
    ended = EndedRuns()
    first = page_runs(fake_store, status="running", ended=ended, now=now)
    assert [r.id for r in first.runs] == ["run005"]
    # an ended run's status is final: the cache answers for it, a running run is read again
    fake_store.r.hset(fake_store.keys.run("run000"), "status", "running")
    fake_store.r.hset(fake_store.keys.run("run005"), "status", "succeeded")
    again = page_runs(fake_store, status="running", ended=ended, now=now)
    assert again.runs == [] and again.total == 0
    later = page_runs(fake_store, status="running", ended=EndedRuns(), now=now)
    assert [r.id for r in later.runs] == ["run000"]  # without the cache, read as stored
