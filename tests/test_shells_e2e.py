"""shell: sh, python and command templates ('perl {0}'), end to end (GitHub's shell:)."""

from __future__ import annotations

import shutil

import pytest

from runbook_celery import submit
from runbook_celery.core.errors import InvalidDefinition
from runbook_celery.definition.loader import load_workflow_text

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def test_python_perl_and_sh_steps_run_their_text_and_read_values_from_env(write_workflow):
    assert shutil.which("perl") and shutil.which("python3")
    wf = write_workflow("""
name: shells
params:
  who: "O'Brien; $(touch /tmp/pwned-shells)"
defaults:
  shell: sh
steps:
  - id: py
    shell: python
    env:
      WHO: ${{ params.who }}
    run: |
      import os
      with open(os.environ["RUNBOOK_OUTPUT"], "a") as f:
          f.write("greeting=hello " + os.environ["WHO"] + "\\n")
  - id: pl
    needs: [py]
    shell: perl {0}
    env:
      G: ${{ steps.py.outputs.greeting }}
    run: |
      open(my $fh, '>>', $ENV{RUNBOOK_OUTPUT}) or die;
      print $fh "len=" . length($ENV{G}) . "\\n";
  - id: posix
    needs: [pl]
    run: |
      set -u
      echo "shell=$(ps -o comm= -p $$)" >> "$RUNBOOK_OUTPUT"
      [ -z "${RUNBOOK_STEP_SCRIPT:-}" ] && echo "script_var=unset" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    greeting = "hello O'Brien; $(touch /tmp/pwned-shells)"
    assert final.steps["py"].outputs == {"greeting": greeting}
    assert final.steps["pl"].outputs == {"len": str(len(greeting))}
    assert final.steps["posix"].outputs == {"shell": "sh", "script_var": "unset"}


def test_a_failing_python_step_fails_with_its_exit_code(write_workflow):
    wf = write_workflow("""
name: py-fails
steps:
  - id: py
    shell: python
    run: |
      import sys
      print("bad input", file=sys.stderr)
      sys.exit(4)
""")
    final = submit(wf).wait(timeout=60)
    step = final.steps["py"]
    assert (step.status, step.exit_code) == ("failed", 4), final.to_dict()
    assert "bad input" in step.stderr_tail


@pytest.mark.parametrize(
    ("shell", "run", "fragment"),
    [
        ("python", "print('${{ params.x }}')", "pass the value through env:"),
        ("perl", "print 1", "nor a command with {0}"),
        ("'unterminated", "true", "cannot be split into words"),
    ],
)
def test_bad_shells_and_expressions_in_non_bash_steps_are_refused(shell, run, fragment):
    text = f'name: t\nparams:\n  x: a\nsteps:\n  - id: s\n    shell: "{shell}"\n    run: "{run}"\n'
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(text)
    assert fragment in str(info.value.problems[0])
