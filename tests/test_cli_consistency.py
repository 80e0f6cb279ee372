"""One vocabulary across the CLI's views, run-id prefixes, and colour only on a terminal.

Fast: the tables are rendered from records built here, and the commands read runs recorded
directly in real Redis (no worker: what is shown does not depend on one).
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import uuid

import click
import pytest
from conftest import ROOT, run_cli
from rich.console import Console

from runbook_celery.cli import cli
from runbook_celery.cli.live import RunView
from runbook_celery.cli.runid import MIN_PREFIX, _callback
from runbook_celery.client.render import COLUMNS, exit_text, record_json, record_table
from runbook_celery.plan.runrecord import RunRecord, StepRecord

pytestmark = pytest.mark.timeout(60)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
T0 = "2026-01-01T00:00:00.000Z"
T1 = "2026-01-01T00:00:01.500Z"


def _record(**steps: StepRecord) -> RunRecord:
    return RunRecord(
        id="r1",
        workflow="wf",
        status="failed",
        params={"a": "1", "b": "2"},
        steps=steps,
        created_at=T0,
        started_at=T0,
        finished_at=T1,
    )


# ---------------------------------------------------------------- one table vocabulary


def test_the_live_and_final_tables_have_the_same_columns_in_the_same_order():
    record = _record(build=StepRecord("succeeded", exit_code=0, attempts=1, started_at=T0))
    final_header = record_table(record).splitlines()[6].split()
    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    console.print(RunView(record))
    live_lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    live_header = next(line for line in live_lines if line.split()[:1] == ["STEP"]).split()
    assert final_header == live_header == list(COLUMNS)
    assert COLUMNS == ("STEP", "STATUS", "EXIT", "TRIES", "DURATION")


def test_the_status_column_fits_awaiting_approval_so_every_column_lines_up():
    record = _record(
        build=StepRecord("succeeded", exit_code=0, attempts=1, started_at=T0, finished_at=T1),
        deploy=StepRecord("awaiting_approval"),
        test=StepRecord("failed", exit_code=-15, attempts=2, started_at=T0, finished_at=T1),
    )
    rows = record_table(record).splitlines()[6:10]
    # each right-aligned column ends at the same offset on every row
    for word in ("EXIT", "TRIES"):
        end = rows[0].index(word) + len(word)
        for row in rows[1:]:
            assert row[end - 1] != " " and (len(row) == end or row[end] == " "), rows
    assert rows[2].split()[:2] == ["deploy", "awaiting_approval"]


def test_a_signal_shows_as_128_plus_n_with_its_name_whether_recorded_as_143_or_minus_15():
    assert exit_text(-15) == exit_text(143) == "143 (SIGTERM)"
    assert exit_text(-9) == exit_text(137) == "137 (SIGKILL)"
    assert exit_text(3) == "3"
    assert exit_text(None) == "-"
    record = _record(s=StepRecord("failed", exit_code=-15), t=StepRecord("failed", exit_code=143))
    steps = record_json(record)["steps"]
    assert steps["s"]["exit_code"] == steps["t"]["exit_code"] == 143
    assert steps["s"]["signal"] == steps["t"]["signal"] == "SIGTERM"
    assert set(steps["s"]) == set(record.to_dict()["steps"]["s"]) | {"signal"}


def test_a_reused_step_is_marked_in_the_final_and_live_tables():
    record = _record(
        a=StepRecord("succeeded", exit_code=0, reused=True),
        b=StepRecord("succeeded", exit_code=0, attempts=1, started_at=T0, finished_at=T1),
    )
    rows = {line.split()[0]: line for line in record_table(record).splitlines()[7:]}
    assert "succeeded (reused)" in rows["a"]
    assert "reused" not in rows["b"]
    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    console.print(RunView(record))
    assert "succeeded (reused)" in console.file.getvalue()  # type: ignore[attr-defined]


# ---------------------------------------------------------------- runs recorded in Redis


def _crafted_run(
    store, run_id: str, params: dict[str, str] | None = None, workflow: str = "crafted"
) -> str:  # type: ignore[no-untyped-def]
    snapshot = {
        "workflow": workflow,
        "params": params or {},
        "mode": "canvas",
        "steps": [{"id": "a", "needs": []}],
    }
    store.create_run(run_id, snapshot, "0" * 64)
    return run_id


@pytest.fixture
def twins(store):  # type: ignore[no-untyped-def]
    """Two runs whose ids share their first 8 characters."""
    base = uuid.uuid4().hex[:8]
    ids = [_crafted_run(store, base + uuid.uuid4().hex[:24]) for _ in range(2)]
    yield base, ids
    for run_id in ids:
        store.delete_run(run_id)


@pytest.mark.parametrize(
    "command", [("status",), ("status", "--json"), ("logs",), ("graph",), ("events", "--run")]
)
def test_a_unique_prefix_of_a_run_id_names_the_run(twins, command):
    _base, ids = twins
    prefix = ids[0][: len(_base) + 4]  # unique: the twins differ after the base
    if ids[1].startswith(prefix):
        pytest.skip("the random ids happen to share this prefix too")
    res = run_cli(*command, prefix)
    assert res.returncode == 0, res.stderr
    if command == ("status",):
        assert res.stdout.splitlines()[0] == f"run       {ids[0]}"
    if command == ("status", "--json"):
        assert json.loads(res.stdout)["id"] == ids[0]


def test_an_ambiguous_prefix_exits_2_and_lists_the_runs_it_matches(twins):
    base, ids = twins
    res = run_cli("status", base)
    assert res.returncode == 2, res.stderr
    assert f"run id prefix '{base}' is ambiguous" in res.stderr
    for run_id in ids:
        assert f"error:   {run_id}" in res.stderr.splitlines()
    assert "Traceback" not in res.stderr


def test_a_prefix_of_no_run_exits_4():
    res = run_cli("status", "f" * 6 + uuid.uuid4().hex[:6])
    assert res.returncode == 4, res.stderr
    assert "not found" in res.stderr


def test_a_prefix_shorter_than_the_minimum_exits_2(twins):
    base, _ids = twins
    res = run_cli("status", base[: MIN_PREFIX - 1])
    assert res.returncode == 2
    assert f"at least {MIN_PREFIX} characters" in res.stderr


def test_text_that_names_another_key_of_a_run_is_no_run(twins):
    _base, ids = twins
    res = run_cli("status", f"{ids[0]}:step:a")
    assert res.returncode == 4, res.stderr


def test_every_command_that_takes_a_run_id_resolves_prefixes():
    taking = []
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        for param in command.params:
            if param.name == "run_id":
                taking.append(name)
                assert param.callback is _callback, f"{name} takes a run id in full only"
    expected = {"status", "cancel", "rerun", "pause", "resume", "approve", "reject"}
    expected |= {"retry", "skip", "abort", "logs", "events", "watch"}
    assert expected <= set(taking)


def test_status_and_runs_show_params_the_same_way(store):
    run_id = _crafted_run(store, uuid.uuid4().hex, {"env": "prod", "n": "3"})
    try:
        status = run_cli("status", run_id)
        runs = run_cli("runs", "--workflow", "crafted", "-n", "50")
    finally:
        store.delete_run(run_id)
    assert status.returncode == runs.returncode == 0, status.stderr + runs.stderr
    assert "params    env=prod, n=3" in status.stdout.splitlines()
    row = next(line for line in runs.stdout.splitlines() if line.startswith(run_id))
    assert row.endswith("env=prod, n=3")


# ---------------------------------------------------------------- colour


def _on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with stdout on a pseudo-terminal; returns its exit code and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runbook_celery", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=30), out.decode()


def _env(**changes: str | None) -> dict[str, str]:
    env = {**os.environ, "TERM": "xterm-256color"}
    for key, value in changes.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    return env


@pytest.mark.parametrize("command", ["status", "runs"])
def test_status_words_are_coloured_on_a_terminal_and_not_when_piped(store, command):
    # A run of its own workflow, ended at fixed times: the three invocations below take
    # seconds on a loaded machine, and a running run's duration (or another test's run in
    # the list) would change the text between them.
    workflow = f"crafted-{uuid.uuid4().hex[:8]}"
    run_id = _crafted_run(store, uuid.uuid4().hex, workflow=workflow)
    store.r.hset(
        store.keys.run(run_id),
        mapping={
            "status": "cancelled",
            "created_at": "2026-01-01T00:00:00+00:00",
            "started_at": "2026-01-01T00:00:01+00:00",
            "finished_at": "2026-01-01T00:00:03+00:00",
        },
    )
    args = ("status", run_id) if command == "status" else ("runs", "--workflow", workflow)
    try:
        code, tty = _on_a_terminal(*args, env=_env(NO_COLOR=None))
        _, no_color = _on_a_terminal(*args, env=_env(NO_COLOR="1"))
        piped = run_cli(*args, env={"NO_COLOR": ""})
    finally:
        store.delete_run(run_id)
    assert code == 0
    word = "pending" if command == "status" else "cancelled"  # the step's, or the run's
    assert ANSI.search(tty) and word in ANSI.sub("", tty)
    if command == "status":
        assert click.style("pending", dim=True) in tty
    assert not ANSI.search(no_color)
    assert piped.returncode == 0 and word in piped.stdout
    assert not ANSI.search(piped.stdout)
    # colour never moves a column: without its codes the terminal shows the piped text
    assert ANSI.sub("", tty).replace("\r\n", "\n").strip() == piped.stdout.strip()


def test_validate_takes_json_like_every_other_command(tmp_path):
    wf = tmp_path / "ok.yaml"
    wf.write_text("name: ok\nsteps:\n  - id: a\n    run: 'true'\n")
    res = run_cli("validate", "--json", str(wf))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [{"file": str(wf), "valid": True, "problems": []}]
