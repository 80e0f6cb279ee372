"""Page load times of the dashboard for a 500-step run and a 10,000-run history.

The store is seeded directly (``RunStore.create_run``) under a prefix of its own, then
Flower is asked for each page a few times; the median must be well under a second. Run
with ``-s`` to see the figures (docs/http-api.md quotes them).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from conftest import PREFIX
from web_helpers import WebFlower, web_flower

from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.plan.compile import build_snapshot
from runbook_celery.store import RunStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HISTORY = 10_000
STEPS = 500
LAYERS = 10  # 500 steps as 10 layers of 50, each step needing two of the layer before
WORKFLOWS = [f"perf-{n}" for n in range(5)]
STATUSES = ["succeeded"] * 6 + ["failed", "cancelled", "running", "skipped"]
LIMIT_S = 1.0
REPEAT = 5
STARTED = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
FINISHED = (datetime.now(UTC) - timedelta(minutes=4)).isoformat().replace("+00:00", "Z")


def big_workflow() -> str:
    width = STEPS // LAYERS
    lines = ["name: perf-big", "steps:"]
    for layer in range(LAYERS):
        for i in range(width):
            lines.append(f"  - id: s{layer}-{i}")
            if layer:
                lines.append(f"    needs: [s{layer - 1}-{i}, s{layer - 1}-{(i + 1) % width}]")
            lines.append("    run: echo ok")
    return "\n".join(lines) + "\n"


def seed(store: RunStore) -> str:
    """10,000 small runs over five workflows, and one run of 500 steps in every state."""
    small = build_snapshot(load_workflow_text("name: perf-0\nsteps:\n  - {id: a, run: 'true'}\n"))
    pipe = store.r.pipeline(transaction=False)
    for n in range(HISTORY):
        run_id = f"perf{n:06d}"
        snapshot = {**small, "workflow": WORKFLOWS[n % len(WORKFLOWS)], "params": {"n": str(n)}}
        store.create_run(run_id, snapshot, "sha")
        status = STATUSES[n % len(STATUSES)]
        pipe.hset(
            store.keys.run(run_id),
            mapping={
                "status": status,
                "started_at": STARTED,
                "finished_at": FINISHED,
            },
        )
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()

    snapshot = build_snapshot(load_workflow_text(big_workflow()))
    store.create_run("perfbig", snapshot, "sha")
    pipe = store.r.pipeline(transaction=False)
    for n, spec in enumerate(snapshot["steps"]):
        status = STATUSES[n % len(STATUSES)] if n < 400 else "pending"
        fields = {"status": status, "attempts": 1}
        if status != "pending":
            fields.update(
                started_at=STARTED,
                finished_at=FINISHED,
                exit_code=0 if status == "succeeded" else 1,
                outputs=json.dumps({"result": f"value {n}"}),
                stderr_tail=json.dumps([f"warning {i} of step {n}" for i in range(20)]),
                history=json.dumps([{"attempt": 1, "exit_code": 0, "reason": None}]),
            )
        pipe.hset(store.keys.step("perfbig", spec["id"]), mapping=fields)
    pipe.hset(store.keys.run("perfbig"), "status", "running")
    pipe.execute()
    return "perfbig"


@pytest.fixture(scope="module")
def perf(redis_client, tmp_path_factory) -> Iterator[tuple[WebFlower, str]]:  # type: ignore[no-untyped-def]
    prefix = f"{PREFIX}:perf"
    store = RunStore(redis_client, prefix)
    big = seed(store)
    env = {"RUNBOOK_PREFIX": prefix}
    with web_flower(tmp_path_factory.mktemp("logs"), env=env) as server:
        yield server, big


def timed(fl: WebFlower, path: str) -> tuple[float, float]:
    """Seconds of the first load of ``path`` and the median of REPEAT loads after it."""
    start = time.perf_counter()
    first = fl.request("GET", path)
    cold = time.perf_counter() - start
    assert first.status == 200, first.text[:500]
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        resp = fl.request("GET", path)
        times.append(time.perf_counter() - start)
        assert resp.status == 200
    return cold, statistics.median(times)


def test_pages_load_well_under_a_second(perf):
    fl, big = perf
    pages = {
        "/runs (10,000 runs, page 1)": "/runs",
        "/runs?page=150 (deep page)": "/runs?page=150",
        "/runs?status=failed (filter)": "/runs?status=failed",
        "/runs?workflow=perf-3&status=succeeded&page=3 (two filters)": (
            "/runs?workflow=perf-3&status=succeeded&page=3"
        ),
        "/api/runs?limit=50": "/api/runs?limit=50",
        "/runs/<500-step run>": f"/runs/{big}",
        "/runs/<500-step run>/live (each live update)": f"/runs/{big}/live",
        "/api/runs/<500-step run>": f"/api/runs/{big}",
    }
    figures = {name: timed(fl, path) for name, path in pages.items()}
    print("\npage load times in seconds: first load, then the median of 5")
    for name, (cold, warm) in figures.items():
        print(f"  {cold:7.3f} {warm:7.3f}  {name}")
    count = fl.request("GET", "/runs?status=failed").text
    assert f"{HISTORY // len(STATUSES)} runs" in count  # the filtered count is exact
    deep = fl.request("GET", "/runs?page=150").text
    assert deep.count("<tr data-run=") == 50 and "page 150 of 201" in deep  # 10,001 runs
    page = fl.request("GET", f"/runs/{big}").text
    assert page.count('class="rb-row') == STEPS and page.count('class="rb-node rb-st-') == STEPS
    slow = {name: t for name, t in figures.items() if max(t) >= LIMIT_S}
    assert not slow, f"pages slower than {LIMIT_S}s: {slow}"
