"""The step task's stages, each on its own (``engine/step/``).

A stage is a function of one delivery (``StepExecution``): these drive one stage at a
time with a stand-in for the bound Celery task, on the store's in-memory double and on
real Redis (``store_client``), without a worker, a broker or Bash.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Retry

from runbook_celery.core.settings import get_settings
from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.engine.runner import BashResult
from runbook_celery.engine.step import claim, condition, environment, fanout, policy, record
from runbook_celery.engine.step.context import RunCache
from runbook_celery.engine.step.delivery import StepExecution
from runbook_celery.plan.compile import build_snapshot
from runbook_celery.store import RunStore
from runbook_celery.store.events import FailureReason
from runbook_celery.store.memory import memory_store

WORKFLOW = """\
name: stages
params:
  who: {default: world}
steps:
  - id: build
    run: 'true'
  - id: test
    needs: [build]
    run: echo "${{ params.who }}"
    env:
      GREETING: hello ${{ params.who }}
    retries: {limit: 3, delay: 2, backoff: 3, max_delay: 10, on_exit_codes: [1, 2]}
    skip_on_exit_codes: [99]
    continue_on_error: [7]
  - id: report
    needs: [test]
    if: failure()
    run: 'true'
"""


class StandInTask:
    """What the stages use of a bound Celery task."""

    name = "runbook.step"

    def __init__(self, run_id: str, step_id: str) -> None:
        self.request = SimpleNamespace(chain=None, chord=None, id=f"{run_id}.{step_id}")
        self.args = (run_id, step_id)
        self.retried: list[float] = []

    def signature_from_request(self) -> dict[str, Any]:
        return {"task": self.name, "args": list(self.args), "kwargs": {}, "options": {}}

    def retry(self, countdown: float = 0, **_: Any) -> Retry:
        self.retried.append(countdown)
        return Retry()


@pytest.fixture
def store(store_client: Any) -> RunStore:
    return memory_store(prefix=get_settings().prefix, client=store_client)


@pytest.fixture
def run_id(store: RunStore) -> str:
    run = uuid.uuid4().hex
    snapshot = build_snapshot(load_workflow_text(WORKFLOW), {})
    snapshot["base_dir"] = None  # steps run nowhere: no Bash in these tests
    store.create_run(run, snapshot, "sha")
    return run


def delivery(store: RunStore, run_id: str, step_id: str) -> StepExecution:
    ctx = RunCache().get(store, run_id)
    task = StandInTask(run_id, step_id)
    return StepExecution(task, get_settings(), store, ctx, run_id, step_id)  # type: ignore[arg-type]


def test_the_claim_starts_a_ready_step_once_and_a_second_delivery_is_told_to_come_back(
    store: RunStore, run_id: str
) -> None:
    first = delivery(store, run_id, "build")
    decision = claim.start(first, check_needs=True, ignore_cancel=False)
    assert (decision.action, decision.attempt) == ("start", 1)

    second = delivery(store, run_id, "build")
    busy = claim.start(second, check_needs=True, ignore_cancel=False)
    assert busy.action == "busy"
    with pytest.raises(Retry):
        claim.not_started(second, busy)
    assert second.task.retried == [max(1, get_settings().lease_seconds // 2)]  # type: ignore[attr-defined]


def test_a_step_whose_needs_have_not_finished_is_not_started(store: RunStore, run_id: str) -> None:
    decision = claim.start(delivery(store, run_id, "test"), check_needs=True, ignore_cancel=False)
    assert decision.action != "start"


def test_the_retry_policy_backs_off_caps_the_delay_and_retries_only_listed_exit_codes(
    store: RunStore, run_id: str
) -> None:
    x = delivery(store, run_id, "test")
    delays = []
    for attempt in (1, 2, 3, 4):
        x.attempt = attempt
        delays.append(policy.retry_delay(x, FailureReason.EXIT_CODE, 1))
    assert delays == [2, 6, 10, None]  # 2·3^(n-1), at most max_delay, limit 3 retries
    x.attempt = 1
    assert policy.retry_delay(x, FailureReason.EXIT_CODE, 5) is None  # not in on_exit_codes
    assert policy.retry_delay(x, FailureReason.WORKER_LOST, 1) is None  # not retryable


def test_continue_on_error_with_exit_codes_allows_only_those_exits(
    store: RunStore, run_id: str
) -> None:
    x = delivery(store, run_id, "test")
    assert policy.allowed_failure(x, FailureReason.EXIT_CODE, 7)
    assert not policy.allowed_failure(x, FailureReason.EXIT_CODE, 1)
    assert not policy.allowed_failure(x, FailureReason.TIMEOUT, 7)


def test_the_environment_holds_placed_values_the_run_facts_and_an_operators_override(
    store: RunStore, run_id: str
) -> None:
    x = delivery(store, run_id, "test")
    x.attempt = 2
    env, _resolve = environment.environment(x, {}, {"GREETING": "overridden", "EXTRA": "1"})
    var = next(iter(x.spec.vars))  # ${{ params.who }} in run:, as a variable
    assert env[var] == "world"
    assert env["GREETING"] == "overridden" and env["EXTRA"] == "1"
    assert (env["RUNBOOK_RUN_ID"], env["RUNBOOK_STEP_ID"]) == (run_id, "test")
    assert (env["RUNBOOK_WORKFLOW"], env["RUNBOOK_STEP_ATTEMPT"]) == ("stages", "2")


def test_a_condition_on_failure_runs_after_a_failed_need_and_says_why_it_would_not(
    store: RunStore, run_id: str
) -> None:
    store.r.hset(store.keys.step(run_id, "build"), "status", "succeeded")
    store.r.hset(store.keys.step(run_id, "test"), "status", "failed")
    assert condition.condition(delivery(store, run_id, "report")) == (True, False, "")

    store.r.hset(store.keys.step(run_id, "test"), "status", "succeeded")
    verdict = condition.condition(delivery(store, run_id, "report"))
    assert verdict == (False, False, "condition false: failure()")


def test_recording_an_exit_code_listed_in_skip_on_exit_codes_skips_the_step(
    store: RunStore, run_id: str
) -> None:
    store.r.hset(store.keys.step(run_id, "build"), "status", "succeeded")
    x = delivery(store, run_id, "test")
    decision = claim.start(x, check_needs=False, ignore_cancel=False)
    assert decision.action == "start"
    x.attempt, x.mode = decision.attempt, decision.mode

    result = record.record(x, BashResult(exit_code=99, stderr_tail=["no tests"]), "t0")

    assert (result["status"], result["reason"]) == ("skipped", FailureReason.EXIT_CODE_SKIP)
    step = store.step_hashes(run_id, ["test"])["test"]
    assert step["status"] == "skipped" and step["exit_code"] == "99"
    assert x.recorded and x.task.retried == []  # type: ignore[attr-defined]


FANNED = """\
name: fanned
steps:
  - id: m
    matrix: {i: [1, 2, 3]}
    run: 'true'
"""


def test_a_duplicate_join_reads_none_of_the_instances(store: RunStore) -> None:
    """A join of a step already recorded (another join, or a cancel) is a replay: it reads
    the step, not its instances (thousands, for a large for_each)."""
    run = uuid.uuid4().hex
    snapshot = build_snapshot(load_workflow_text(FANNED), {})
    snapshot["base_dir"] = None
    store.create_run(run, snapshot, "sha")
    ids = store.add_instances(run, "m", [{"matrix": {"i": i}} for i in (1, 2, 3)])
    store.r.hset(store.keys.step(run, "m"), "status", "succeeded")
    read: list[str] = []
    step_hashes = store.step_hashes

    def counting(run_id: str, steps: Any) -> Any:
        read.extend(steps)
        return step_hashes(run_id, steps)

    store.step_hashes = counting  # type: ignore[method-assign]
    result = fanout.join_instances(delivery(store, run, "m"))
    assert result["duplicate"] is True and result["status"] == "succeeded"
    assert read == ["m"] and not set(ids) & set(read)
