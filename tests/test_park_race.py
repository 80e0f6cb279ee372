"""A step whose gate keeps opening and closing never runs unclaimed.

The step task's real code (claim, park, run Bash, record) on real Redis, driven in this
process with a stand-in for the Celery task, so that the gate can be flipped exactly
between two transitions: the run is paused whenever the task claims the step and resumed
right after, the worst interleaving a pause/resume storm can produce.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Ignore, Retry

from runbook_celery.core.settings import get_settings
from runbook_celery.definition.loader import load_workflow
from runbook_celery.engine.step.context import cache
from runbook_celery.engine.step.delivery import StepExecution
from runbook_celery.plan.compile import build_snapshot


class StandInTask:
    """What StepExecution uses of a bound Celery task."""

    name = "runbook.step"

    def __init__(self, run_id: str, step_id: str) -> None:
        self.request = SimpleNamespace(chain=None, chord=None, id=f"{run_id}.{step_id}")
        self.args = (run_id, step_id)

    def signature_from_request(self) -> dict[str, Any]:
        return {"task": self.name, "args": list(self.args), "kwargs": {}, "options": {}}

    def retry(self, **_: Any) -> Retry:
        return Retry()


@pytest.mark.timeout(60)
def test_a_gate_flipping_between_claim_and_park_never_lets_bash_run_unclaimed(
    store, tmp_path: Path
):
    # Given a run whose step records when its Bash runs
    marker = tmp_path / "ran"
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: flip\nsteps:\n  - id: a\n    run: echo ran >> {marker}\n")
    run_id = uuid.uuid4().hex
    snapshot = build_snapshot(load_workflow(wf), {})
    store.create_run(run_id, snapshot, "sha")
    run_key = store.keys.run(run_id)

    # and a gate that is closed whenever the step is claimed, open right after
    claim = store.start_step

    def flipping_claim(*args: Any, **kwargs: Any) -> Any:
        store.r.hset(run_key, "paused", "1")
        try:
            return claim(*args, **kwargs)
        finally:
            store.r.hset(run_key, "paused", "0")

    store.start_step = flipping_claim  # type: ignore[method-assign]
    ctx = cache.get(store, run_id)
    execution = StepExecution(StandInTask(run_id, "a"), get_settings(), store, ctx, run_id, "a")

    # When the delivery executes
    with pytest.raises(Ignore):
        execution.execute()

    # Then the step was parked, not run: Bash never ran without a claim
    assert not marker.exists()
    step = store.step_hashes(run_id, ["a"])["a"]
    assert step["status"] == "waiting" and step.get("attempts") == "0"
    assert store.r.llen(f"{run_key}:parked") == 1
    assert "step_started" not in [e["type"] for _, e in store.events(run_id)]
