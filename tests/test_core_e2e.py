"""Core regressions end to end: reruns of skipped conditional steps."""

from __future__ import annotations

import pytest

from runbook_celery import submit
from runbook_celery.api import rerun

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("original", ["failed", "succeeded"])
def test_a_rerun_with_a_skipped_condition_step_that_needs_only_reused_steps_ends(
    original, write_workflow, tmp_path
):
    # Given cleanup (needs build, if: failure()) skipped in a first run, with flaky
    # failing in it (or, second case, the first run succeeding)
    flag = tmp_path / "flaky-passes"
    if original == "succeeded":
        flag.touch()
    wf = write_workflow(f"""
name: rerun-skipped-condition
steps:
  - id: build
    run: echo "v=1" >> "$RUNBOOK_OUTPUT"
  - id: cleanup
    needs: [build]
    if: ${{{{ failure() }}}}
    run: echo cleaning
  - id: flaky
    run: |
      if [ ! -e {flag} ]; then touch {flag}; exit 1; fi
""")
    first = submit(wf).wait(timeout=60)
    assert first.status == original
    assert first.steps["cleanup"].status == "skipped"

    # When it is rerun so that cleanup runs again and build is reused
    if original == "failed":
        again = rerun(first.id, from_failed=True)
    else:
        again = rerun(first.id, from_step="flaky")
    final = again.wait(timeout=45)

    # Then the rerun ends: cleanup's condition sees the reused build as succeeded
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["build"].reused and final.steps["build"].status == "succeeded"
    assert final.steps["cleanup"].status == "skipped"
    assert final.steps["flaky"].status == "succeeded"
