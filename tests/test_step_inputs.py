"""A step's inputs checked before Bash starts, and where working_dir and script: may point."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook_celery.core.errors import InvalidDefinition
from runbook_celery.definition import expressions as ex
from runbook_celery.definition.loader import load_workflow, load_workflow_text
from runbook_celery.engine.stepinputs import nul_source, working_dir
from runbook_celery.plan.compile import build_snapshot


def resolver(values: dict[str, str]):  # type: ignore[no-untyped-def]
    def resolve(ref: ex.Ref) -> str:
        return values.get(ref.text(), "")

    return resolve


SPEC = {
    "env": {"GREETING": "hello ${{ steps.a.outputs.name }}!"},
    "vars": {"RB_1": "steps.a.outputs.v"},
}


def test_clean_values_pass():
    assert nul_source(SPEC, {"W": "w"}, {"R": "r"}, resolver({})) is None


@pytest.mark.parametrize(
    ("values", "workflow_env", "override", "named"),
    [
        (
            {"steps.a.outputs.name": "x\x00"},
            {},
            {},
            "${{ steps.a.outputs.name }} (in env GREETING)",
        ),
        ({"steps.a.outputs.v": "\x00"}, {}, {}, "${{ steps.a.outputs.v }} (in run:)"),
        ({}, {"W": "a\x00"}, {}, "workflow env W"),
        ({}, {}, {"R": "\x00"}, "retry --env 'R'"),
    ],
)
def test_a_nul_byte_is_named_by_where_it_came_from(values, workflow_env, override, named):
    message = nul_source(SPEC, workflow_env, override, resolver(values))
    assert message is not None and named in message and "NUL byte" in message


def test_an_existing_working_dir_is_used(tmp_path: Path):
    assert working_dir({"working_dir": str(tmp_path)}, {"base_dir": "/nope"}) == (
        str(tmp_path),
        None,
    )
    assert working_dir({}, {"base_dir": str(tmp_path)}) == (str(tmp_path), None)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"working_dir": "/no/such/dir"}, "working_dir /no/such/dir does not exist on this worker"),
        ({"working_dir": "/x/${{ params.d }}"}, "still holds a ${{ }} expression"),
        ({}, "the workflow's folder /no/flows, where its steps run, does not exist"),
    ],
)
def test_a_missing_directory_is_a_reason_not_the_workers_own(spec, fragment):
    cwd, why = working_dir(spec, {"base_dir": "/no/flows"})
    assert cwd is None and why is not None and fragment in why


# ------------------------------------------------------------------ at validation


def test_working_dir_may_not_lead_out_of_the_workflows_folder(tmp_path: Path):
    (tmp_path / "flows" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "flows" / "link").symlink_to(tmp_path / "outside")
    wf = tmp_path / "flows" / "wf.yaml"
    wf.write_text("""name: dirs
steps:
  - id: up
    working_dir: ../outside
    run: pwd
  - id: link
    working_dir: link/.
    run: pwd
  - id: expr
    working_dir: ${{ params.d }}
    run: pwd
  - id: sub
    working_dir: sub/../sub
    run: pwd
  - id: absolute
    working_dir: /tmp
    run: pwd
  - id: itself
    working_dir: .
    run: pwd
params:
  d: x
""")
    with pytest.raises(InvalidDefinition) as info:
        load_workflow(wf)
    rendered = [p.render() for p in info.value.problems]
    assert len(rendered) == 3, rendered
    assert rendered[0].startswith(f"{wf}:4: steps[0].working_dir: working_dir '../outside' leads")
    assert f"out of the workflow's folder (to {tmp_path / 'outside'})" in rendered[0]
    assert rendered[1].startswith(f"{wf}:7: steps[1].working_dir: working_dir 'link/.' leads")
    assert rendered[2].startswith(f"{wf}:10: steps[2].working_dir:")
    assert "expressions (${{ }}) are not evaluated in working_dir" in rendered[2]


def test_a_script_with_a_nul_byte_is_refused_at_validation_and_at_trigger(tmp_path: Path):
    script = tmp_path / "job.sh"
    script.write_bytes(b"echo one\necho \x00two\n")
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: nul-script\nsteps:\n  - id: job\n    script: job.sh\n")
    with pytest.raises(InvalidDefinition) as info:
        load_workflow(wf)
    (problem,) = info.value.problems
    assert problem.render() == (
        f"{wf}:4: steps[0].script: script 'job.sh:2': contains a NUL byte, so it is not a text "
        "file; remove it"
    )
    # written after validation: trigger reads the script and refuses it too
    script.write_text("echo fine\n")
    loaded = load_workflow(wf)
    script.write_bytes(b"\x00")
    with pytest.raises(InvalidDefinition) as info:
        build_snapshot(loaded)
    assert "script 'job.sh:1': contains a NUL byte" in info.value.problems[0].render()


def test_an_expression_free_working_dir_text_is_still_fine(tmp_path: Path):
    loaded = load_workflow_text(
        "name: ok\nsteps:\n  - id: a\n    working_dir: build\n    run: pwd\n", base_dir=tmp_path
    )
    assert build_snapshot(loaded)["steps"][0]["working_dir"] == str(tmp_path / "build")
