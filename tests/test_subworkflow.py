"""``uses:``/``with:`` without a worker: what validation refuses (at the line of the using
step), what the trigger freezes, how a child's snapshot is built from it, and the
AWAIT_CHILD transition on real Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from runbook_celery.core.errors import InvalidDefinition, InvalidParams
from runbook_celery.definition.loader import load_workflow, load_workflow_text
from runbook_celery.definition.subworkflow import MAX_DEPTH, child_ids, child_run_id
from runbook_celery.engine.childruns import await_child, child_snapshot, evaluate_with
from runbook_celery.plan.compile import DYNAMIC, build_snapshot, choose_mode
from runbook_celery.store import RunStore

pytestmark = pytest.mark.timeout(30)

CHILD = """\
name: child
params:
  tag: {required: true}
  count: {type: number, default: 1}
  mode: {type: choice, options: [fast, slow], default: fast}
outputs:
  artifact: ${{ steps.make.outputs.artifact }}
steps:
  - id: make
    run: echo "artifact=${{ params.tag }}" >> "$RUNBOOK_OUTPUT"
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(InvalidDefinition) as caught:
        load_workflow(path)
    return [p.render() for p in caught.value.problems]


def _using(folder: Path, step: str, name: str = "parent.yaml") -> Path:
    return _write(folder, name, f"name: parent\nsteps:\n{step}")


# ---------------------------------------------------------------- what a using step may say


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("    run: echo hi\n", "run"),
        ("    script: x.sh\n", "script"),
        ("    shell: sh\n", "shell"),
        ("    env: {A: b}\n", "env"),
        ("    matrix: {os: [a, b]}\n", "matrix"),
        ("    for_each: ${{ fromJSON('[1]') }}\n", "for_each"),
        ("    retries: {limit: 2}\n", "retries"),
        ("    timeout: 5\n", "timeout"),
        ("    output: OUT\n", "output"),
        ("    on_failure: pause\n", "on_failure"),
    ],
)
def test_uses_is_exclusive_with_what_runs_bash_or_fans_out(tmp_path, extra, key):
    _write(tmp_path, "child.yaml", CHILD)
    parent = _using(tmp_path, f"  - id: a\n    uses: child.yaml\n    with: {{tag: x}}\n{extra}")
    problems = _problems(parent)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{parent}:6: steps[0].{key}: a step with uses: has no {key} (")


def test_continue_on_error_of_a_using_step_is_true_not_exit_codes(tmp_path):
    parent = _using(tmp_path, "  - id: a\n    uses: child.yaml\n    continue_on_error: [1]\n")
    problems = _problems(parent)
    assert problems == [
        f"{parent}:5: steps[0].continue_on_error: a child run has no exit code: write "
        "continue_on_error: true"
    ]


def test_with_without_uses_is_refused(tmp_path):
    parent = _using(tmp_path, "  - id: a\n    run: echo\n    with: {x: 1}\n")
    assert _problems(parent) == [
        f"{parent}:5: steps[0].with: with: gives params to the workflow of uses:, and this "
        "step has no uses:"
    ]


def test_a_using_step_needs_no_run(tmp_path):
    _write(tmp_path, "child.yaml", CHILD)
    parent = _using(tmp_path, "  - id: a\n    uses: child.yaml\n    with: {tag: x}\n")
    loaded = load_workflow(parent)
    assert loaded.workflow.steps[0].uses == "child.yaml"
    assert choose_mode(loaded.workflow, loaded.graph)[0] == DYNAMIC


# ---------------------------------------------------------------- across files


def test_a_cycle_of_uses_is_refused_at_the_line_that_closes_it(tmp_path):
    a = _write(tmp_path, "a.yaml", "name: a\nsteps:\n  - id: x\n    uses: b.yaml\n")
    b_text = "name: b\nsteps:\n  - id: y\n    run: echo\n  - id: z\n    uses: a.yaml\n"
    b = _write(tmp_path, "b.yaml", b_text)
    problems = _problems(a)
    assert problems[0] == f"{a}:4: steps[0].uses: uses 'b.yaml': that workflow is invalid"
    assert problems[1] == (
        f"{b}:6: steps[1].uses: uses: cycle a.yaml -> b.yaml -> a.yaml; a workflow may not "
        "use itself, directly or through others"
    )
    assert len(problems) == 2


def test_a_workflow_that_uses_itself_is_a_cycle(tmp_path):
    a = _write(tmp_path, "a.yaml", "name: a\nsteps:\n  - id: x\n    uses: ./a.yaml\n")
    assert _problems(a) == [
        f"{a}:4: steps[0].uses: uses: cycle a.yaml -> a.yaml; a workflow may not use itself, "
        "directly or through others"
    ]


def _chain(folder: Path, levels: int) -> Path:
    """f0 uses f1 uses ... uses f<levels>; the last one runs Bash."""
    _write(folder, f"f{levels}.yaml", f"name: f{levels}\nsteps:\n  - id: s\n    run: echo\n")
    for i in range(levels - 1, -1, -1):
        _write(folder, f"f{i}.yaml", f"name: f{i}\nsteps:\n  - id: s\n    uses: f{i + 1}.yaml\n")
    return folder / "f0.yaml"


def test_uses_may_nest_max_depth_levels_and_no_deeper(tmp_path):
    assert MAX_DEPTH == 5
    assert load_workflow(_chain(tmp_path / "ok", MAX_DEPTH)).workflow.name == "f0"
    deep = _chain(tmp_path / "deep", MAX_DEPTH + 1)
    problems = _problems(deep)
    assert problems[-1] == (
        f"{deep.parent / 'f5.yaml'}:4: steps[0].uses: uses: nests deeper than 5 levels "
        "(f0.yaml -> f1.yaml -> f2.yaml -> f3.yaml -> f4.yaml -> f5.yaml -> f6.yaml); move "
        "steps of the deepest workflows into the ones that use them"
    )


def test_a_missing_or_invalid_or_outside_file_is_refused_at_the_uses_line(tmp_path):
    _write(tmp_path, "bad.yaml", "name: bad\nsteps:\n  - id: s\n")
    _write(tmp_path.parent, "outside.yaml", CHILD)
    parent = _using(
        tmp_path,
        "  - id: a\n    uses: nope.yaml\n"
        "  - id: b\n    uses: bad.yaml\n"
        "  - id: c\n    uses: ../outside.yaml\n    with: {tag: x}\n",
    )
    problems = _problems(parent)
    assert problems[0] == f"{parent}:4: steps[0].uses: uses 'nope.yaml': file not found"
    assert problems[1] == f"{parent}:6: steps[1].uses: uses 'bad.yaml': that workflow is invalid"
    assert "needs either 'run' or 'script'" in problems[2]
    assert problems[3].startswith(f"{parent}:8: steps[2].uses: uses '../outside.yaml': resolves")
    assert "outside the workflow's folder" in problems[3]


def test_with_is_checked_against_the_childs_params(tmp_path):
    _write(tmp_path, "child.yaml", CHILD)
    parent = _using(
        tmp_path,
        "  - id: a\n    uses: child.yaml\n    with:\n      count: many\n      mode: medium\n"
        "      colour: red\n",
    )
    assert _problems(parent) == [
        f"{parent}:6: steps[0].with.count: param 'count' (type: number) must be a decimal "
        "number such as 3, -1 or 2.5 (got 'many')",
        f"{parent}:7: steps[0].with.mode: param 'mode' (type: choice) must be one of fast, "
        "slow (got 'medium')",
        f"{parent}:8: steps[0].with.colour: 'colour' is not a param of child (its params: "
        "count, mode, tag)",
        f"{parent}:4: steps[0].uses: child requires param 'tag': give it under with:",
    ]


def test_with_expressions_follow_the_rules_of_env_values(tmp_path):
    _write(tmp_path, "child.yaml", CHILD)
    parent = _using(
        tmp_path,
        "  - id: first\n    run: echo\n"
        "  - id: a\n    uses: child.yaml\n    with:\n      tag: ${{ steps.first.outputs.x }}\n"
        "      count: ${{ params.n }}\n",
    )
    assert _problems(parent) == [
        f"{parent}:8: steps[1].with.tag: ${{{{ steps.first.outputs.x }}}}: step 'a' does not "
        "need 'first'; add it to 'needs' (directly or through a step it needs)",
        f"{parent}:9: steps[1].with.count: ${{{{ params.n }}}}: unknown param 'n' (params: "
        "none defined)",
    ]


# ---------------------------------------------------------------- freezing and child snapshots


def _tree(folder: Path) -> Path:
    _write(folder, "lib/child.yaml", CHILD.replace("run: echo", "script: make.sh\n    # run"))
    _write(folder, "lib/make.sh", "echo from-script\n")
    _write(folder, "lib/plain.yaml", "name: plain\nsteps:\n  - id: p\n    uses: child.yaml\n"
                                    "    with: {tag: fixed}\n")  # fmt: skip
    return _write(
        folder,
        "parent.yaml",
        "name: parent\nparams:\n  v: '1'\nsteps:\n  - id: prep\n    run: echo\n"
        "  - id: build\n    needs: prep\n    uses: lib/child.yaml\n"
        "    with: {tag: 'v${{ params.v }}-${{ steps.prep.outputs.x }}', count: 3}\n"
        "  - id: nested\n    uses: lib/plain.yaml\n",
    )


def test_the_trigger_freezes_every_used_file_and_script_of_the_tree(tmp_path):
    snapshot = build_snapshot(load_workflow(_tree(tmp_path)))
    lib = (tmp_path / "lib").resolve()
    bundle = snapshot["subworkflows"]
    assert sorted(bundle) == [str(lib / "child.yaml"), str(lib / "plain.yaml")]
    assert bundle[str(lib / "child.yaml")]["scripts"] == {"make.sh": "echo from-script\n"}
    assert bundle[str(lib / "plain.yaml")]["uses"] == {"child.yaml": str(lib / "child.yaml")}
    build = snapshot["steps"][1]
    assert build["uses"] == str(lib / "child.yaml")
    assert build["with"] == {"tag": "v${{ params.v }}-${{ steps.prep.outputs.x }}", "count": 3}
    assert snapshot["mode"] == DYNAMIC


def test_a_childs_snapshot_comes_from_the_bundle_even_once_the_files_are_gone(tmp_path):
    parent = build_snapshot(load_workflow(_tree(tmp_path)))
    for f in (tmp_path / "lib").iterdir():
        f.unlink()
    spec = parent["steps"][1]
    values = {"params": {"v": "1"}, "outputs": {"prep": {"x": "$(reboot)"}}}

    def resolve(ref):  # what the worker resolves: values, whatever they hold
        return values["params"][ref.name] if ref.kind == "params" else "$(reboot)"

    params = evaluate_with(spec["with"], resolve)
    assert params == {"tag": "v1-$(reboot)", "count": 3}
    child = child_snapshot(parent, "r1", spec, params)
    assert child["params"] == {"tag": "v1-$(reboot)", "count": "3", "mode": "fast"}
    assert child["steps"][0]["command"] == "echo from-script\n"
    assert child["parent"] == {"run": "r1", "step": "build", "depth": 1}
    assert child["concurrency"] is None
    # a child of the child reads the same bundle
    nested_spec = parent["steps"][2]
    middle = child_snapshot(parent, "r1", nested_spec, {})
    grand = child_snapshot(middle, "r2", middle["steps"][0], {"tag": "fixed"})
    assert grand["parent"]["depth"] == 2
    assert grand["steps"][0]["command"] == "echo from-script\n"


def test_a_child_deeper_than_the_limit_is_refused_at_run_time_too(tmp_path):
    parent = build_snapshot(load_workflow(_tree(tmp_path)))
    parent["parent"] = {"run": "r0", "step": "s", "depth": MAX_DEPTH}
    with pytest.raises(InvalidDefinition, match="nests deeper than 5"):
        child_snapshot(parent, "r1", parent["steps"][1], {"tag": "x"})


def test_with_values_that_do_not_fit_at_run_time_are_invalid_params(tmp_path):
    parent = build_snapshot(load_workflow(_tree(tmp_path)))
    with pytest.raises(InvalidParams, match="param 'count' \\(type: number\\)"):
        child_snapshot(parent, "r1", parent["steps"][1], {"tag": "x", "count": "lots"})


def test_child_run_ids_are_derived_from_parent_and_step():
    assert child_run_id("r1", "build") == child_run_id("r1", "build")
    assert len({child_run_id("r1", "build"), child_run_id("r2", "build"),
                child_run_id("r1", "test")}) == 3  # fmt: skip
    assert len(child_run_id("r1", "build")) == 32
    snapshot = load_workflow_text("name: w\nsteps:\n  - id: s\n    run: echo\n")
    assert child_ids(build_snapshot(snapshot), "r1") == {}


# ---------------------------------------------------------------- AWAIT_CHILD on real Redis


@pytest.fixture
def st(redis_client) -> RunStore:  # type: ignore[no-untyped-def]
    from runbook_celery.core.settings import get_settings

    s = get_settings()
    return RunStore(redis_client, s.prefix, s.retention)


def _running_step(st: RunStore) -> str:
    run = uuid.uuid4().hex
    snapshot = {"workflow": "wf", "params": {}, "mode": "dynamic", "steps": [{"id": "a"}]}
    st.create_run(run, snapshot, "sha")
    decision = st.start_step(
        run, "a", token="t", needs=[], output_steps=[], workflow="wf", lease_seconds=30,
        max_attempts=5, check_needs=False, ignore_cancel=False, needs_approval=False,
        max_active=0, park_message=None, approval_prompt="",
    )  # fmt: skip
    assert decision.action == "start"
    return run


def _wait(st: RunStore, run: str, child: str, token: str = "t") -> tuple[int, str]:
    return await_child(st, run, "a", token=token, attempt=1, workflow="wf", child_id=child)


def test_await_child_parks_the_holder_without_lease_or_watch(st: RunStore) -> None:
    run, child = _running_step(st), uuid.uuid4().hex
    st.create_run(child, {"workflow": "c", "params": {}, "mode": "dynamic", "steps": []}, "s")
    assert _wait(st, run, child) == (1, "")
    step = st.step_hashes(run, ["a"])["a"]
    assert (step["status"], step["child_run"]) == ("running", child)
    assert "holder" not in step and not st.r.exists(st.keys.lease(run, "a"))
    assert st.r.zscore(st.keys.leases, f"{run}|a") is None
    events = [e for _, e in st.events(run)]
    assert events[-1]["type"] == "step_awaiting_child" and events[-1]["child_run"] == child


def test_await_child_parks_nothing_when_the_child_has_ended(st: RunStore) -> None:
    run, child = _running_step(st), uuid.uuid4().hex
    st.create_run(child, {"workflow": "c", "params": {}, "mode": "dynamic", "steps": []}, "s")
    st.r.hset(st.keys.run(child), mapping={"status": "failed", "finished_at": "now"})
    assert _wait(st, run, child) == (0, "failed")
    step = st.step_hashes(run, ["a"])["a"]
    assert step["holder"] == "t" and "parked_sig" not in step  # the holder finishes it
    assert _wait(st, run, uuid.uuid4().hex) == (0, "gone")


def test_await_child_refuses_a_delivery_that_does_not_hold_the_step(st: RunStore) -> None:
    run, child = _running_step(st), uuid.uuid4().hex
    assert _wait(st, run, child, token="other") == (-1, "")
    step = st.step_hashes(run, ["a"])["a"]
    assert step["holder"] == "t" and "child_run" not in step
    assert [e["type"] for _, e in st.events(run)][-1] == "step_result_discarded"


def test_a_child_run_is_recorded_once(st: RunStore) -> None:
    child = uuid.uuid4().hex
    snapshot = {"workflow": "c", "params": {}, "mode": "dynamic", "steps": [{"id": "x"}]}
    assert st.create_run_once(child, snapshot, "s", parent_run="p", parent_step="a")
    st.r.hset(st.keys.run(child), "status", "running")
    assert not st.create_run_once(child, snapshot, "s", parent_run="p", parent_step="a")
    assert st.run_status(child) == "running"
    record = st.get_run(child)
    assert (record.parent_run, record.parent_step) == ("p", "a")


# ---------------------------------------------------------------- the example, in process


def test_the_cpython_example_runs_its_reusable_workflows_as_child_runs():
    from runbook_celery.testing import run_workflow

    root = Path(__file__).resolve().parent.parent
    result = run_workflow(root / "definitions" / "cpython-build.yaml", {"free_threading": True})
    assert result.status == "succeeded", result.record.to_dict()
    assert result.outputs == {
        "linux": "ubuntu: tests passed (free-threading true)",
        "macos": "macos: tests passed",
        "verdict": "all green",
    }
    assert set(result.record.children) == {"check-docs", "build-ubuntu", "build-macos"}


# ---------------------------------------------------------------- the reconciler's net


def test_the_sweep_hands_on_a_step_whose_child_ended_long_enough_ago(st: RunStore) -> None:
    from runbook_celery.engine.childruns import sweep_waiting
    from runbook_celery.store import now_iso

    run, child = _running_step(st), uuid.uuid4().hex
    st.create_run(child, {"workflow": "c", "params": {}, "mode": "dynamic", "steps": []}, "s")
    assert _wait(st, run, child) == (1, "")
    calls: list[tuple[str, str, str]] = []

    def finish(run_id: str, step_id: str, status: str, **fields: object) -> None:
        calls.append((run_id, step_id, str(status)))

    # a child still going, or one that ended just now (its hand-off may be on its way): wait
    assert sweep_waiting(st, finish, older_than=0) == 0
    st.r.hset(st.keys.run(child), mapping={"status": "cancelled", "finished_at": now_iso()})
    assert sweep_waiting(st, finish, older_than=60) == 0
    assert calls == []
    # ended before the cutoff: handed on once, and no longer looked at
    assert sweep_waiting(st, finish, older_than=0) == 1
    assert calls == [(run, "a", "failed")]  # cancelled on its own: fails the step
    assert st.r.zscore(st.keys.children_waiting, f"{run}|a") is None
    assert sweep_waiting(st, finish, older_than=0) == 0
