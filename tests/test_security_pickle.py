"""Only JSON crosses the broker: a pickled message sent to our queue is refused, not run."""

from __future__ import annotations

import os
import pickle
import uuid

import pytest
from conftest import QUEUE

from runbook_celery import submit
from runbook_celery.engine.app import STEP_TASK, app

pytestmark = [pytest.mark.slow]


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_task_message_is_refused_and_never_unpickled(
    tmp_path, write_workflow, worker, redis_client
):
    marker = tmp_path / "unpickled"
    task_id = uuid.uuid4().hex
    body = pickle.dumps(((_Payload(str(marker)), "step"), {}, {}))
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        producer.publish(
            body,
            routing_key=QUEUE,
            exchange="",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={
                "id": task_id,
                "task": STEP_TASK,
                "lang": "py",
                "root_id": task_id,
                "argsrepr": "()",
                "kwargsrepr": "{}",
            },
            declare=[],
        )
    # A JSON run published after it completes: the worker has consumed past the pickle.
    wf = write_workflow("name: after\nsteps:\n  - id: s\n    run: 'true'\n")
    assert submit(wf).wait(timeout=60).status == "succeeded"
    assert not marker.exists()
    queued = redis_client.lrange(QUEUE, 0, -1)
    assert not [m for m in queued if task_id.encode() in m]  # taken off the queue, not left
    assert "Refusing to deserialize untrusted content of type pickle" in (
        worker.log_path.read_text(errors="replace")
    )
    assert app.AsyncResult(task_id).state == "PENDING"  # never executed, no result stored
