"""The run snapshot's format version: a reader refuses a version it does not know.

This is what lets a fleet be upgraded while runs are in flight: a run recorded by a newer
release is failed clearly by an older worker, never misread by it.
"""

from __future__ import annotations

import json
import uuid

import pytest

from runbook_celery import submit
from runbook_celery.core.errors import EXIT_INVALID, UnsupportedSnapshot
from runbook_celery.plan import compile as compile_
from runbook_celery.plan.snapshotversion import SNAPSHOT_VERSION, checked_snapshot
from runbook_celery.store import RunStore


@pytest.mark.parametrize("version", [1, None])
def test_a_known_version_or_none_written_is_read(version: int | None) -> None:
    snapshot = {"steps": []} if version is None else {"version": version, "steps": []}
    checked_snapshot("r1", snapshot)  # no error: versions before this check wrote none


@pytest.mark.parametrize("version", [SNAPSHOT_VERSION + 1, 0, "1", True, 1.0, None])
def test_an_unknown_version_is_refused_with_what_to_do(version: object) -> None:
    with pytest.raises(UnsupportedSnapshot) as err:
        checked_snapshot("r1", {"version": version, "steps": []})
    assert err.value.exit_code == EXIT_INVALID
    assert f"snapshot version {version!r}" in str(err.value)
    assert "upgrade it (workers first)" in str(err.value)


def test_the_store_refuses_to_hand_out_a_snapshot_it_cannot_read(store_client) -> None:  # type: ignore[no-untyped-def]
    store = RunStore(store_client, prefix=f"snapver-{uuid.uuid4().hex[:8]}")
    run = uuid.uuid4().hex
    store.create_run(run, {"workflow": "wf", "params": {}, "mode": "dynamic", "steps": []}, "sha")
    assert store.snapshot(run)["workflow"] == "wf"
    newer = {"version": SNAPSHOT_VERSION + 1, "workflow": "wf", "steps": []}
    store.r.hset(store.keys.run(run), "snapshot", json.dumps(newer))
    with pytest.raises(UnsupportedSnapshot):
        store.snapshot(run)


def test_builds_write_the_version_this_release_reads(write_workflow) -> None:  # type: ignore[no-untyped-def]
    from runbook_celery.definition.loader import load_workflow

    loaded = load_workflow(write_workflow("name: v\nsteps:\n  - id: a\n    run: 'true'\n"))
    assert compile_.build_snapshot(loaded, {})["version"] == SNAPSHOT_VERSION


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("worker")
def test_a_worker_fails_a_run_recorded_by_a_newer_release_and_goes_on(write_workflow, monkeypatch):  # type: ignore[no-untyped-def]
    # Given a run submitted by a client of a newer release (a snapshot version the worker,
    # a separate process of this release, does not know)
    wf = write_workflow("name: from-the-future\nsteps:\n  - id: a\n    run: echo ran\n")
    monkeypatch.setattr(compile_, "SNAPSHOT_VERSION", SNAPSHOT_VERSION + 1)
    future = submit(wf)
    monkeypatch.undo()

    # Then the worker runs none of it and fails the run, saying why
    record = future.wait(timeout=60)
    assert record.status == "failed", record.to_dict()
    step = record.steps["a"]
    assert (step.status, step.reason) == ("cancelled", "unsupported_snapshot")
    assert not future.logs("a").lines  # Bash never ran
    assert "unsupported_snapshot" in json.dumps(record.to_dict())

    # And the worker goes on with a run of its own release
    assert submit(wf).wait(timeout=60).status == "succeeded"
