"""Running a step's Bash: exit codes, outputs, bounded capture, timeouts and no orphans."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runbook_celery.engine.bashenv import place_values
from runbook_celery.engine.outputfile import parse_outputs
from runbook_celery.engine.outputstream import LINE_LIMIT, TAIL_LINES
from runbook_celery.engine.runner import run_bash
from runbook_celery.store.events import FailureReason

pytestmark = pytest.mark.timeout(30)

ENV = {"PATH": os.environ["PATH"]}


def run(command: str, **kwargs):  # type: ignore[no-untyped-def]
    return run_bash(command, {**ENV, **kwargs.pop("env", {})}, **kwargs)


def exited(pid: int, within: float = 5.0) -> bool:
    """Block until process ``pid`` has exited (zombie or reaped), at most ``within`` seconds.

    Waits on a pidfd, so there is no polling and no sleep; a zombie whose parent died counts
    as exited, since whether it is reaped depends on the container's init.
    """
    if not hasattr(os, "pidfd_open"):  # pragma: no cover - Linux < 5.3
        return not still_running(pid)
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], within)
        return bool(readable)
    finally:
        os.close(fd)


def still_running(pid: int) -> bool:
    """``os.kill(pid, 0)`` says the pid exists; /proc says whether it is more than a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


# ---------------------------------------------------------------- exit codes and streams


def test_a_successful_step_exits_zero_and_keeps_its_stdout():
    result = run("echo one; echo two")
    assert result.ok
    assert result.exit_code == 0
    assert result.reason is None
    assert result.stdout_tail == ["one", "two"]
    assert result.stderr_tail == []
    assert result.duration >= 0


@pytest.mark.parametrize("code", [1, 2, 42, 255])
def test_a_non_zero_exit_code_is_reported_as_is(code):
    result = run(f"exit {code}")
    assert result.exit_code == code
    assert not result.ok


def test_bash_runs_with_errexit_so_a_failing_command_stops_the_step():
    result = run("false\necho not-reached")
    assert result.exit_code == 1
    assert result.stdout_tail == []


def test_bash_runs_with_pipefail_so_a_failing_pipe_stage_fails_the_step():
    result = run("false | cat\necho not-reached")
    assert result.exit_code == 1
    assert "not-reached" not in result.stdout_tail


def test_the_stderr_tail_keeps_the_last_lines():
    result = run("for i in $(seq 1 500); do echo err-$i >&2; done; exit 3")
    assert result.exit_code == 3
    assert len(result.stderr_tail) == TAIL_LINES
    assert result.stderr_tail[-1] == "err-500"
    assert result.stderr_tail[0] == f"err-{500 - TAIL_LINES + 1}"


def test_a_very_long_line_is_cut_to_the_line_limit():
    result = run(f"head -c {LINE_LIMIT * 3} /dev/zero | tr '\\0' x; echo")
    assert result.stdout_tail == ["x" * LINE_LIMIT]


def test_invalid_utf8_in_output_is_replaced_not_fatal():
    result = run("printf 'caf\\xe9\\n'")
    assert result.ok
    assert result.stdout_tail == ["caf\ufffd"]


def test_every_line_is_forwarded_with_its_stream():
    seen: list[tuple[str, str]] = []
    run("echo out; echo err >&2", on_line=lambda stream, line: seen.append((stream, line)))
    assert sorted(seen) == [("stderr", "err"), ("stdout", "out")]


def test_a_broken_log_sink_does_not_break_the_step():
    def sink(stream: str, line: str) -> None:
        raise RuntimeError("sink down")

    assert run("echo a; echo b", on_line=sink).ok


def test_the_step_sees_only_the_environment_it_is_given(tmp_path):
    result = run(
        'printf "%s|%s|%s" "$GIVEN" "${NOT_GIVEN-unset}" "$PWD"',
        env={"GIVEN": "yes"},
        cwd=str(tmp_path),
    )
    assert result.stdout_tail == [f"yes|unset|{tmp_path}"]


def test_the_command_is_not_visible_to_the_step_as_a_variable():
    result = run('echo "${RUNBOOK_COMMAND__-gone}"')
    assert result.stdout_tail == ["gone"]


def test_a_missing_working_directory_is_a_spawn_error(tmp_path):
    result = run("echo hi", cwd=str(tmp_path / "missing"))
    assert result.exit_code is None
    assert result.reason == FailureReason.SPAWN_ERROR
    assert result.message is not None and "cannot start bash" in result.message


# ---------------------------------------------------------------- outputs


def test_outputs_are_parsed_from_runbook_output():
    result = run(
        'echo "tag=v1.2" >> "$RUNBOOK_OUTPUT"\n'
        'echo "url=https://x/?a=b&c=d" >> "$RUNBOOK_OUTPUT"\n'
        'printf "notes<<EOF\\nline 1\\nline 2\\nEOF\\n" >> "$RUNBOOK_OUTPUT"\n'
    )
    assert result.ok
    assert result.outputs == {"tag": "v1.2", "url": "https://x/?a=b&c=d", "notes": "line 1\nline 2"}


def test_no_outputs_is_an_empty_mapping():
    assert run("true").outputs == {}


def test_outputs_of_a_failed_step_are_not_collected():
    result = run('echo "k=v" >> "$RUNBOOK_OUTPUT"; exit 1')
    assert result.exit_code == 1
    assert result.outputs == {}


def test_outputs_larger_than_the_limit_fail_the_step_as_output_too_large():
    result = run(
        'head -c 2000 /dev/zero | tr "\\0" x | sed "s/^/k=/" >> "$RUNBOOK_OUTPUT"',
        output_limit=1000,
    )
    assert result.exit_code == 0
    assert result.reason == FailureReason.OUTPUT_TOO_LARGE
    assert not result.ok
    assert result.outputs == {}
    assert result.message is not None and "more than the 1000-byte limit" in result.message


def test_outputs_exactly_at_the_limit_are_fine():
    result = run("printf 'k=%s' 12345678 >> \"$RUNBOOK_OUTPUT\"", output_limit=10)
    assert result.ok
    assert result.outputs == {"k": "12345678"}


def test_malformed_outputs_fail_the_step_with_a_message():
    result = run('echo "no equals sign" >> "$RUNBOOK_OUTPUT"')
    assert not result.ok
    assert result.reason == FailureReason.EXIT_CODE
    assert result.message is not None
    assert result.message.startswith("bad $RUNBOOK_OUTPUT: line 1: expected key=value")


@pytest.mark.parametrize(
    ("text", "outputs"),
    [
        ("", {}),
        ("\n\n", {}),
        ("a=1\nb=2\n", {"a": "1", "b": "2"}),
        ("a=1\na=2\n", {"a": "2"}),  # the last write wins
        ("a=x=y\n", {"a": "x=y"}),
        ("a=\n", {"a": ""}),
        (" spaced = v \n", {"spaced": " v "}),
        ("with-dash_1=v", {"with-dash_1": "v"}),
        ("a=has<<inside\n", {"a": "has<<inside"}),
        ("body<<END\nk=v\n\nEND\n", {"body": "k=v\n"}),
        ("body<<END\nEND\n", {"body": ""}),
        ("one<<A\n1\nA\ntwo<<B\n2\nB\nthree=3\n", {"one": "1", "two": "2", "three": "3"}),
    ],
)
def test_parse_outputs(text, outputs):
    assert parse_outputs(text) == outputs


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("just text\n", "line 1: expected key=value"),
        ("ok=1\n9bad=2\n", "line 2: bad output name '9bad'"),
        ("=v\n", "bad output name ''"),
        ("has space=v\n", "bad output name 'has space'"),
        ("body<<END\nnever closed\n", "output 'body' is missing its end marker 'END'"),
        ("<<END\nEND\n", "bad multi-line output header"),
        ("body<<\nx\n", "bad multi-line output header"),
    ],
)
def test_parse_outputs_refuses_malformed_text(text, fragment):
    with pytest.raises(ValueError) as info:
        parse_outputs(text)
    assert fragment in str(info.value)


# ---------------------------------------------------------------- timeouts, cancel, orphans


def test_a_timeout_kills_the_step_and_its_grandchildren(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    # bash -> bash -> sleep: the sleep is a grandchild of the step's shell
    result = run(
        f"bash -c 'sleep 60 & echo $! > {pid_file}; wait'",
        timeout=0.5,
        kill_grace=0.5,
    )
    elapsed = time.monotonic() - started
    assert result.reason == FailureReason.TIMEOUT
    assert result.message == "timed out after 0.5s"
    assert not result.ok
    assert elapsed < 5
    pid = int(pid_file.read_text())
    assert exited(pid)
    assert not still_running(pid)


def test_a_step_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    pid_file = tmp_path / "stubborn.pid"
    started = time.monotonic()
    result = run(
        f"trap '' TERM; bash -c 'trap \"\" TERM; sleep 60 & echo $! > {pid_file}; wait'",
        timeout=0.3,
        kill_grace=0.3,
    )
    assert result.reason == FailureReason.TIMEOUT
    assert time.monotonic() - started < 5
    assert exited(int(pid_file.read_text()))


def test_nothing_the_step_backgrounded_outlives_it(tmp_path):
    pid_file = tmp_path / "background.pid"
    started = time.monotonic()
    # the step itself exits 0 at once, leaving a sleep behind that holds its stdout open
    result = run(f"sleep 60 & echo $! > {pid_file}")
    assert result.ok
    assert time.monotonic() - started < 5
    pid = int(pid_file.read_text())
    assert exited(pid)
    assert not still_running(pid)


def test_a_background_process_with_closed_streams_is_killed_too(tmp_path):
    pid_file = tmp_path / "quiet.pid"
    result = run(f"nohup sleep 60 >/dev/null 2>&1 </dev/null & echo $! > {pid_file}")
    assert result.ok
    assert exited(int(pid_file.read_text()))


def test_tick_returning_true_cancels_the_step(tmp_path):
    pid_file = tmp_path / "cancelled.pid"
    calls = []

    def tick() -> bool:
        calls.append(1)
        return pid_file.exists()  # cancel as soon as the step is known to be running

    result = run(
        f"sleep 60 & echo $! > {pid_file}; wait", tick=tick, tick_interval=0.02, kill_grace=1
    )
    assert result.reason == FailureReason.CANCELLED
    assert result.message == "cancelled"
    assert calls
    assert exited(int(pid_file.read_text()))


def test_a_step_that_finishes_before_its_timeout_is_not_timed_out():
    result = run("echo fast", timeout=30)
    assert result.ok
    assert result.reason is None


# ---------------------------------------------------------------- the process running steps dies


def _process_running_a_step(tmp_path: Path, command: str) -> subprocess.Popen[bytes]:
    """A Python process (like a pool process) running ``command`` through run_bash."""
    code = (
        "import os, sys\n"
        "from runbook_celery.engine.runner import run_bash\n"
        "run_bash(sys.argv[1], {'PATH': os.environ['PATH']})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, command], cwd=tmp_path)


def _read_fifo(path: Path) -> str:
    """What the step writes into the FIFO at ``path`` (blocks until it has written it)."""
    with open(path) as fh:
        return fh.read()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_when_the_process_running_a_step_dies_the_whole_step_dies_with_it(tmp_path, sig):
    # Given a step whose Bash and a backgrounded grandchild are running
    pids = tmp_path / "pids"
    os.mkfifo(pids)
    proc = _process_running_a_step(tmp_path, f"sleep 300 & echo $$ $! > {pids}; wait")
    bash_pid, grandchild = map(int, _read_fifo(pids).split())

    # When the process running it is killed (SIGKILL: no Python code runs at all)
    proc.send_signal(sig)
    proc.wait(10)

    # Then the step's Bash and the grandchild die too (the guardian saw end of file)
    assert exited(bash_pid) and exited(grandchild)
    assert not still_running(bash_pid) and not still_running(grandchild)


def test_a_step_registers_with_the_guardian_and_is_released_after(tmp_path):
    # Given one process that runs two steps one after the other
    code = (
        "import os, sys\n"
        "from runbook_celery.engine.guardian import GUARDIAN\n"
        "from runbook_celery.engine.runner import run_bash\n"
        "env = {'PATH': os.environ['PATH']}\n"
        "print(run_bash('echo $$', env).stdout_tail[0], flush=True)\n"
        "first = GUARDIAN.proc.pid\n"
        "print(run_bash('echo $$', env).stdout_tail[0], flush=True)\n"
        "print(first == GUARDIAN.proc.pid, flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    )
    # Then both ran under one guardian (one per process, not one per step)
    first, second, same = out.stdout.split()
    assert first != second and same == "True"


# ---------------------------------------------------------------- values Bash is given


def test_a_value_over_the_kernels_128_kib_limit_reaches_bash_byte_for_byte():
    # trailing newlines, quotes and shell syntax kept; E2BIG before values went by memfd
    value = "v" * 300_000 + "\n$(touch /nonexistent) '\"` \n\n"
    result = run(
        'printf %s "$BIG" > "$OUT"; echo "len=${#BIG}" >> "$RUNBOOK_OUTPUT"',
        env={"BIG": value, "OUT": "/dev/stdout"},
    )
    assert result.ok, result
    assert result.outputs == {"len": str(len(value))}


def test_a_large_value_is_set_in_bash_but_not_exported_so_programs_still_start(tmp_path):
    out = tmp_path / "out"
    result = run(
        f'printf %s "$BIG" | sha256sum > {out}; bash -c \'echo "child:${{#BIG}}"\' >> {out}',
        env={"BIG": "b" * 1024 * 1024},
    )
    assert result.ok, result
    import hashlib

    digest = hashlib.sha256(b"b" * 1024 * 1024).hexdigest()
    assert out.read_text().splitlines() == [f"{digest}  -", "child:0"]


def test_a_command_over_128_kib_runs():
    command = "# " + "c" * 300_000 + '\necho x=1 >> "$RUNBOOK_OUTPUT"'
    result = run(command)
    assert result.ok, result
    assert result.outputs == {"x": "1"}


def test_many_values_that_together_exceed_arg_max_all_reach_bash():
    values = {f"V{i}": "v" * 100_000 for i in range(25)}  # each fits, together 2.5 MB
    check = " && ".join(f'[ "${{#V{i}}}" = 100000 ]' for i in range(25))
    result = run(f"{check} && ls / > /dev/null", env=values)
    assert result.ok, result


def test_place_values_keeps_small_values_in_the_environment():
    placed = place_values({"A": "1", "B": "x" * 1000})
    assert placed.env == {"A": "1", "B": "x" * 1000}
    assert placed.fds == () and placed.preamble == ""


def test_place_values_moves_the_largest_values_until_the_environment_fits():
    env = {"SMALL": "s", "MID": "m" * 40_000, "BIG": "b" * 60_000, "HUGE": "h" * 200_000}
    placed = place_values(env, budget=50_000)
    try:
        assert placed.by_fd == ("HUGE", "BIG")  # over MAX_ARG_STRLEN, then the largest
        assert set(placed.env) == {"SMALL", "MID"}
        assert "read -r -d '' HUGE" in placed.preamble
    finally:
        placed.close()


def test_place_values_leaves_names_bash_cannot_assign_in_the_environment():
    placed = place_values({"weird.name": "w" * 10, "OK": "o" * 200_000}, budget=10)
    try:
        assert placed.by_fd == ("OK",)
        assert "weird.name" in placed.env
    finally:
        placed.close()


@pytest.mark.parametrize(
    ("env", "named"),
    [({"A": "a\x00b"}, "variable 'A'"), ({}, "the step's command")],
)
def test_a_nul_byte_fails_with_bad_input_instead_of_raising(env, named):
    command = "echo hi" if env else "echo \x00"
    result = run(command, env=env)
    assert (result.exit_code, result.reason) == (None, FailureReason.BAD_INPUT)
    assert named in (result.message or "") and "NUL" in (result.message or "")


def test_value_descriptors_do_not_reach_the_steps_programs():
    # a step's programs see only stdin, stdout and stderr (and what they open)
    result = run('ls /proc/self/fd | sort -n | tr "\\n" " "', env={"BIG": "b" * 200_000})
    assert result.ok, result
    assert result.stdout_tail == ["0 1 2 3 "]  # 3: ls's own listing of /proc/self/fd
