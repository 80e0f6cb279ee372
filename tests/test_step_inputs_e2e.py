"""A step's inputs end to end: its directory, NUL bytes and large values arriving at run time,
and the byte budget of its log (issue 12, items 5, 6, 7 and 12)."""

from __future__ import annotations

import hashlib
import shutil
import uuid

import pytest
from conftest import SESSION, WorkerProcess, run_cli

from runbook_celery import submit
from runbook_celery.definition.loader import load_workflow

pytestmark = [pytest.mark.slow]


# ------------------------------------------------------------------ working_dir (item 5)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("worker")
def test_a_missing_working_dir_fails_the_step_at_once_not_in_the_workers_directory(
    write_workflow, tmp_path
):
    # Given a step whose working_dir does not exist, with retries that must not apply
    wf = write_workflow("""
name: missing-dir
steps:
  - id: build
    working_dir: not-there
    retries: {limit: 3, delay: 0}
    run: echo "dir=$PWD" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    step = final.steps["build"]
    # Then it fails with bad_working_dir on its first attempt, naming the directory
    assert final.status == "failed"
    assert (step.status, step.reason, step.attempts) == ("failed", "bad_working_dir", 1)
    assert step.outputs == {}
    assert any(
        f"working_dir {tmp_path / 'not-there'} does not exist" in line for line in step.stderr_tail
    ), step.stderr_tail


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("worker")
def test_a_workflow_folder_missing_on_the_worker_fails_the_step(tmp_path, store):
    # Given a workflow loaded from a folder that is gone by the time the step runs
    # (the worker is on a machine that does not have it)
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "wf.yaml").write_text("name: gone-folder\nsteps:\n  - id: a\n    run: pwd\n")
    loaded = load_workflow(folder / "wf.yaml")
    shutil.rmtree(folder)
    run = submit(loaded)
    final = run.wait(timeout=60)
    step = final.steps["a"]
    assert (step.status, step.reason, step.attempts) == ("failed", "bad_working_dir", 1)
    assert any("workflow's folder" in line and str(folder) in line for line in step.stderr_tail)
    # and the reason is in the step's log too
    logs = run_cli("logs", run.id)
    assert f"the workflow's folder {folder}" in logs.stderr


# ------------------------------------------------------------------ NUL at run time (item 6)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("use", ["run", "env"])
def test_a_nul_byte_in_an_output_fails_the_next_step_at_once_with_bad_input(write_workflow, use):
    # Given an output holding a NUL byte, used by the next step in run: or env:
    consumer = (
        'run: echo "${{ steps.make.outputs.v }}"'
        if use == "run"
        else 'env:\n      V: "${{ steps.make.outputs.v }}"\n    run: echo "$V"'
    )
    wf = write_workflow(f"""
name: nul-output-{use}
steps:
  - id: make
    run: printf 'v=a\\0b\\n' >> "$RUNBOOK_OUTPUT"
  - id: use
    needs: [make]
    retries: {{limit: 3, delay: 0}}
    {consumer}
""")
    final = submit(wf).wait(timeout=60)
    step = final.steps["use"]
    # Then it fails at once (no redelivery, no retry) naming where the NUL came from
    assert (step.status, step.reason, step.attempts) == ("failed", "bad_input", 1)
    where = "(in run:)" if use == "run" else "(in env V)"
    assert any(
        "${{ steps.make.outputs.v }}" in line and where in line and "NUL" in line
        for line in step.stderr_tail
    ), step.stderr_tail


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("worker")
def test_a_nul_byte_in_a_for_each_item_fails_that_instance_with_bad_input(write_workflow):
    wf = write_workflow("""
name: nul-item
steps:
  - id: list
    run: echo 'items=["ok", "bad\\u0000item"]' >> "$RUNBOOK_OUTPUT"
  - id: each
    needs: [list]
    for_each: ${{ steps.list.outputs.items }}
    run: echo "${{ item }}"
""")
    final = submit(wf).wait(timeout=60)
    assert final.steps["each[0]"].status == "succeeded"
    bad = final.steps["each[1]"]
    assert (bad.status, bad.reason, bad.attempts) == ("failed", "bad_input", 1)
    assert any("${{ item }}" in line and "NUL" in line for line in bad.stderr_tail)


# ------------------------------------------------------------------ large values (item 7)


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("worker")
def test_a_1_mib_output_flows_into_the_next_step_byte_for_byte(write_workflow):
    # Given an output of 1 MiB less its header (RUNBOOK_OUTPUT_LIMIT counts the file),
    # with trailing newlines, quotes and shell syntax in it
    wf = write_workflow("""
name: big-output
steps:
  - id: make
    run: |
      {
        echo 'big<<END_OF_BIG'
        head -c 700000 /dev/zero | tr '\\0' 'x'
        printf '\\n$(touch /tmp/never) "quoted" `tick`\\n'
        head -c 348000 /dev/zero | tr '\\0' 'y'
        printf '\\n\\n'
        echo 'END_OF_BIG'
      } >> "$RUNBOOK_OUTPUT"
  - id: use
    needs: [make]
    env:
      BIG: ${{ steps.make.outputs.big }}
    run: |
      sum() { sha256sum | cut -c1-64; }
      echo "in_run=$(printf %s "${{ steps.make.outputs.big }}" | sum)" >> "$RUNBOOK_OUTPUT"
      echo "in_env=$(printf %s "$BIG" | sum)" >> "$RUNBOOK_OUTPUT"
      echo "length=${#BIG}" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=120)
    assert final.status == "succeeded", final.to_dict()["steps"]["use"]
    big = final.steps["make"].outputs["big"]
    assert len(big) > 1_040_000
    digest = hashlib.sha256(big.encode()).hexdigest()
    assert final.steps["use"].outputs == {
        "in_run": digest,
        "in_env": digest,
        "length": str(len(big)),
    }


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("worker")
def test_a_200_kib_param_and_a_200_kib_run_text_work(write_workflow):
    # Given a 200 KiB param and a run: text of over 200 KiB
    filler = "# " + "z" * 205_000
    wf = write_workflow(f"""
name: big-param
params:
  blob: {{required: true}}
steps:
  - id: use
    run: |
      {filler}
      digest=$(printf %s "${{{{ params.blob }}}}" | sha256sum | cut -c1-64)
      echo "digest=$digest" >> "$RUNBOOK_OUTPUT"
""")
    blob = "p" * 200 * 1024 + "\n'\"$x"
    final = submit(wf, {"blob": blob}).wait(timeout=120)
    assert final.status == "succeeded", final.to_dict()["steps"]["use"]
    assert final.steps["use"].outputs == {"digest": hashlib.sha256(blob.encode()).hexdigest()}


# ------------------------------------------------------------------ log bytes (item 12)


@pytest.mark.timeout(180)
def test_a_step_log_is_capped_in_bytes_and_logs_says_what_was_dropped(write_workflow):
    # Given a worker keeping 64 KiB of log per step, and a step printing 2,000 lines of
    # 100 bytes each (200,000 bytes, far fewer lines than RUNBOOK_LOG_LINES)
    queue = f"logbytes-{SESSION}"
    worker = WorkerProcess(
        f"logbytes-{uuid.uuid4().hex[:6]}",
        queues=queue,
        concurrency=1,
        env={"RUNBOOK_LOG_BYTES": "65536"},
    )
    try:
        wf = write_workflow(f"""
name: log-bytes
steps:
  - id: chatty
    queue: {queue}
    run: |
      pad=$(printf '%095d' 0)
      for i in $(seq -w 1 2000); do echo "$i$pad"; done
""")
        run = submit(wf)
        assert run.wait(timeout=120).status == "succeeded"
    finally:
        worker.stop()
    res = run_cli("logs", run.id)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    # Then only the newest lines that fit 64 KiB are kept (100 bytes with the newline)
    assert len(lines) == 65536 // 100
    assert lines[-1].startswith("2000") and lines[0].startswith(f"{2000 - len(lines) + 1:04d}")
    dropped = 2000 - len(lines)
    # and logs says how many lines and bytes were dropped, and by which setting
    assert f"[chatty: {dropped:,} lines ({dropped * 100 / 1024:,.1f} KiB) not shown" in res.stderr
    assert "64.0 KiB of log" in res.stderr and "RUNBOOK_LOG_BYTES" in res.stderr
