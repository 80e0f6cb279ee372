"""continue_on_error with exit codes (Dagu's continueOn.exitCode) and skip_on_exit_codes
(Airflow's skip_on_exit_code), end to end."""

from __future__ import annotations

import pytest

from runbook_celery import submit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def test_a_listed_exit_code_continues_and_another_fails(write_workflow):
    wf = write_workflow("""
name: exit-codes
steps:
  - id: listed
    continue_on_error: [3, 4]
    run: exit 3
  - id: after_listed
    needs: [listed]
    run: echo "ran=yes" >> "$RUNBOOK_OUTPUT"
  - id: unlisted
    continue_on_error: [3]
    run: exit 5
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "failed", final.to_dict()
    assert final.steps["listed"].status == "failed"
    assert final.steps["listed"].allowed_failure
    assert final.steps["after_listed"].outputs == {"ran": "yes"}
    assert final.steps["unlisted"].status == "failed"
    assert not final.steps["unlisted"].allowed_failure


@pytest.mark.parametrize("mode", ["canvas", "dynamic"])
def test_a_skip_exit_code_records_skipped_without_retrying_and_skips_dependents(
    write_workflow, mode
):
    # check -> deploy with an unrelated side step is a canvas; a step needing check and
    # side makes an N (check->deploy, check->x, side->x): no canvas, so dynamic dispatch
    n_shape = "  - id: x\n    needs: [check, side]\n    run: echo never\n"
    extra = n_shape if mode == "dynamic" else ""
    wf = write_workflow(f"""
name: skip-codes-{mode}
steps:
  - id: check
    skip_on_exit_codes: [99]
    retries: {{limit: 3, delay: 0}}
    run: |
      echo tried >> "$RUNBOOK_OUTPUT.count"
      exit 99
  - id: deploy
    needs: [check]
    run: echo never
  - id: side
    run: "true"
{extra}""")
    final = submit(wf).wait(timeout=60)
    assert final.mode == mode
    assert final.status == "succeeded", final.to_dict()
    check = final.steps["check"]
    assert (check.status, check.reason, check.exit_code, check.attempts) == (
        "skipped",
        "exit_code_skip",
        99,
        1,
    )
    assert final.steps["deploy"].status == "skipped"


def test_stdout_captured_as_an_output(write_workflow):
    # Dagu's `output: VAR`: the step's stdout, trimmed, as an output of the step
    wf = write_workflow("""
name: capture
steps:
  - id: version
    output: VERSION
    run: |
      echo
      echo "  1.4.2  "
  - id: use
    needs: [version]
    run: echo "got=[${{ steps.version.outputs.VERSION }}]" >> "$RUNBOOK_OUTPUT"
  - id: multi
    output: LINES
    run: printf 'a\\nb\\n'
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["version"].outputs == {"VERSION": "1.4.2"}
    assert final.steps["use"].outputs == {"got": "[1.4.2]"}
    assert final.steps["multi"].outputs == {"LINES": "a\nb"}


def test_captured_stdout_over_the_output_limit_fails_the_step(write_workflow):
    wf = write_workflow("""
name: capture-big
steps:
  - id: big
    output: BLOB
    run: head -c 3000000 /dev/zero | tr '\\0' 'x' | fold -w 1000
""")
    final = submit(wf).wait(timeout=60)
    assert final.steps["big"].status == "failed"
    assert final.steps["big"].reason == "output_too_large", final.to_dict()
