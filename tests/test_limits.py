"""Limits without a worker: group key names, admission checks before writing."""

from __future__ import annotations

import uuid

import pytest

from runbook_celery.core.errors import InvalidDefinition, InvalidOperation
from runbook_celery.definition.loader import load_workflow
from runbook_celery.store.gates import Gates
from runbook_celery.store.keys import Keys


def test_group_keys_never_contain_the_value_and_never_meet():
    k = Keys("p")
    values = ["prod", "prod:queue", "prod:queue:queue", "", "a" * 10_000, "x\n:*?"]
    names = {k.cgroup(v) for v in values} | {k.cgroup_queue(v) for v in values}
    assert len(names) == 2 * len(values)
    for v in (v for v in values if v):
        assert v not in k.cgroup(v).removeprefix("p:cgroup:")
    assert all(len(n) < 100 for n in names)


def test_admission_refuses_a_group_key_of_the_wrong_type_before_writing(store):
    group = f"g-{uuid.uuid4().hex}"
    k = store.keys
    run_id = uuid.uuid4().hex
    store.r.set(k.cgroup_queue(group), "not a list")
    try:
        with pytest.raises(InvalidOperation, match="not what runbook-celery wrote"):
            Gates(store).admit(run_id, group, 1, "queue")
        assert not store.r.exists(k.cgroup(group))  # nothing half-written
        assert not store.r.exists(k.run(run_id))
    finally:
        store.r.delete(k.cgroup_queue(group))


def _matrix(tmp_path, a: int, b: int):  # type: ignore[no-untyped-def]
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: m\nsteps:\n  - id: t\n"
        f"    matrix: {{x: {list(range(a))}, y: {list(range(b))}}}\n"
        "    run: echo ${{ matrix.x }}\n"
    )
    return path


def test_a_matrix_over_the_instance_cap_is_a_validation_error(tmp_path):
    with pytest.raises(InvalidDefinition) as err:
        load_workflow(_matrix(tmp_path, 101, 101))
    text = str(err.value)
    assert "10,201 combinations" in text and "RUNBOOK_MAX_INSTANCES" in text
    assert "m.yaml:4: steps[0].matrix: matrix has" in text
    assert load_workflow(_matrix(tmp_path, 50, 40)).workflow.steps[0].matrix  # 2,000 is fine
