"""Nothing outlives its step: processes that left the step's process group die with it.

A real worker runs a step that starts a process escaping its process group (``setsid``, a
double-forking daemon, ``set -m``); the escaped process writes its own pid to a file, the
step hands it to the test through a FIFO and waits. Then the step is cancelled, times out,
or its worker is SIGKILLed, and the escaped process must be gone (pidfd wait; a zombie
counts as gone: reaping it is the init's business).

cgroup (root here) holds in all three cases; subreaper holds for cancel and timeout (when
the worker itself dies, only the step's process group is killed: docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SESSION, WorkerProcess

from runbook_celery import submit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ESCAPES = {
    "setsid": "setsid bash -c 'echo $$ > {pid}; exec sleep 1000' >/dev/null 2>&1 </dev/null &",
    "double-fork": (
        "( ( exec setsid bash -c 'echo $$ > {pid}; exec sleep 1000' ) & ) "
        ">/dev/null 2>&1 </dev/null"
    ),
    "set -m": (
        "set -m; bash -c 'echo $$ > {pid}; exec sleep 1000' >/dev/null 2>&1 </dev/null & set +m"
    ),
}


def escaping_workflow(tmp: Path, escape: str, queue: str, timeout: int | None = None) -> Path:
    """A step that starts ``escape``, reports the escaped pid into the FIFO ``tmp/fifo``,
    then waits (for its cancel, its timeout or its worker's death)."""
    pid, fifo = tmp / "escaped.pid", tmp / "fifo"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    limit = f"    timeout: {timeout}\n" if timeout else ""
    path = tmp / "escape.yaml"
    path.write_text(f"""
name: escape
steps:
  - id: escape
    queue: {queue}
{limit}    run: |
      {ESCAPES[escape].format(pid=pid)}
      until [ -s {pid} ]; do sleep 0.05; done
      cat {pid} > {fifo}
      sleep 1000
""")
    return path


@contextlib.contextmanager
def escaped_pid(fifo: Path, within: float = 90) -> Iterator[int]:
    """Wait for the step to report its escaped process; kill it afterwards whatever the
    test found (so a failing run leaves nothing behind)."""
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # we hold a writer too: no EOF races
    data, end = b"", time.monotonic() + within
    try:
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            assert ready, f"the step reported no escaped process in {within}s"
            data += os.read(fd, 64)
    finally:
        os.close(fd)
    pid = int(data)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def gone(pid: int, within: float = 15.0) -> bool:
    """Block (pidfd, no polling) until ``pid`` has exited, at most ``within`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if select.select([fd], [], [], within)[0]:
            return True
    finally:
        os.close(fd)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _worker(mode: str, tag: str) -> tuple[WorkerProcess, str]:
    queue = f"contain-{tag}-{SESSION}"
    worker = WorkerProcess(
        f"contain-{tag}", queues=queue, concurrency=2, env={"RUNBOOK_CONTAINMENT": mode}
    )
    return worker, queue


@pytest.fixture(scope="module", params=["cgroup", "subreaper"])
def contained(request, redis_client) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """A worker per containment mode, on its own queue: (mode, queue)."""
    mode = request.param
    worker, queue = _worker(mode, mode)
    try:
        log = worker.log_path.read_text()
        assert f"steps are contained by {mode}" in log, log[-3000:]
        yield mode, queue
    finally:
        worker.stop()


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_a_cancelled_step_leaves_no_process_behind(contained, escape, tmp_path):
    _, queue = contained
    tmp_path.chmod(0o777)
    # Given a running step whose child escaped its process group
    run = submit(escaping_workflow(tmp_path, escape, queue))
    with escaped_pid(tmp_path / "fifo") as pid:
        # When the run is cancelled
        run.cancel(by="test")
        final = run.wait(timeout=60)
        # Then the step ended and the escaped process died with it
        assert final.steps["escape"].status == "cancelled", final.to_dict()
        assert gone(pid), f"{escape}: process {pid} outlived its cancelled step"


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_a_timed_out_step_leaves_no_process_behind(contained, escape, tmp_path):
    _, queue = contained
    tmp_path.chmod(0o777)
    # Given a step with a timeout whose child escaped its process group
    run = submit(escaping_workflow(tmp_path, escape, queue, timeout=5))
    with escaped_pid(tmp_path / "fifo") as pid:
        # When the step times out
        final = run.wait(timeout=60, raise_on_failure=False)
        # Then the escaped process died with it
        assert final.steps["escape"].reason == "timeout", final.to_dict()
        assert gone(pid), f"{escape}: process {pid} outlived its timed-out step"


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_a_sigkilled_worker_leaves_no_step_process_behind(escape, tmp_path, redis_client):
    # Given a worker with cgroup containment running a step whose child escaped its group
    worker, queue = _worker("cgroup", f"kill-{escape.replace(' ', '')}")
    tmp_path.chmod(0o777)
    try:
        submit(escaping_workflow(tmp_path, escape, queue))
        with escaped_pid(tmp_path / "fifo") as pid:
            # When the whole worker is SIGKILLed (no Python code of it runs any more)
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
            # Then its guardian ends the step's cgroup: the escaped process dies too
            assert gone(pid), f"{escape}: process {pid} outlived its SIGKILLed worker"
    finally:
        worker.stop()


def _guardians_of(worker: WorkerProcess) -> list[int]:
    """The guardian processes of a worker's pool processes (bash ... guardian ROOT)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                procs[int(entry)] = (ppid, argv)
    pool = {pid for pid, (ppid, _) in procs.items() if ppid == worker.proc.pid}
    return [
        pid
        for pid, (ppid, argv) in procs.items()
        if ppid in pool and argv[0] == b"bash" and b"guardian" in argv
    ]


@pytest.mark.parametrize("contained", ["cgroup"], indirect=True)  # the sweeper: a cgroup worker
def test_a_live_worker_ends_the_steps_of_a_dead_one_whose_guardian_died_too(
    contained, tmp_path, redis_client
):
    mode, _ = contained
    assert mode == "cgroup"
    # Given a worker running a step whose child escaped, and another worker on this machine
    doomed, queue = _worker("cgroup", "doomed")
    tmp_path.chmod(0o777)
    try:
        submit(escaping_workflow(tmp_path, "setsid", queue))
        with escaped_pid(tmp_path / "fifo") as pid:
            guardians = _guardians_of(doomed)
            assert guardians, "the worker's pool processes have no guardian"
            # When the worker and its guardians all die at once (the OOM killer, kill -9)
            for guardian in guardians:
                os.kill(guardian, signal.SIGKILL)
            os.killpg(doomed.proc.pid, signal.SIGKILL)
            doomed.proc.wait()
            # Then the other worker's reconciler ends the dead worker's cgroup
            assert gone(pid, within=30), f"process {pid} outlived its worker and guardian"
    finally:
        doomed.stop()


@pytest.mark.timeout(180)
def test_a_paused_workers_escaped_process_is_dead_before_another_worker_takes_the_step(
    tmp_path, redis_client
):
    # Given step x on worker A (cgroup, lease 3 s): its first execution leaves a process
    # that escaped its group, the next one reports whether that process still lives
    tmp_path.chmod(0o777)
    pid, fifo, leader = tmp_path / "escaped.pid", tmp_path / "fifo", tmp_path / "leader"
    os.mkfifo(fifo)
    queue = f"contain-fence-{SESSION}"
    wf = tmp_path / "fence.yaml"
    wf.write_text(f"""
name: fenced-escape
steps:
  - id: x
    queue: {queue}
    run: |
      if [ ! -s {pid} ]; then
        setsid bash -c 'echo $$ > {pid}; exec sleep 1000' >/dev/null 2>&1 </dev/null &
        until [ -s {pid} ]; do sleep 0.05; done
        echo $$ > {leader}
        cat {pid} > {fifo}
        sleep 1000
      fi
      state=$(awk '{{print $3}}' "/proc/$(cat {pid})/stat" 2>/dev/null || :)
      echo "first=${{state:-gone}}" >> "$RUNBOOK_OUTPUT"
""")
    env = {"RUNBOOK_LEASE_SECONDS": "3", "RUNBOOK_CONTAINMENT": "cgroup"}
    a = WorkerProcess("contain-fence-a", queues=queue, concurrency=1, env=env)
    b, pool = None, 0
    try:
        run = submit(wf)
        with escaped_pid(fifo):
            pool = int(Path(f"/proc/{leader.read_text().strip()}/stat").read_text().split()[3])
            # When A's pool process stops (it cannot renew the lease) and worker B comes up
            os.kill(pool, signal.SIGSTOP)
            b = WorkerProcess("contain-fence-b", queues=queue, concurrency=1, env=env)
            final = run.wait(timeout=90)
    finally:
        if pool:
            os.kill(pool, signal.SIGCONT)
        a.stop()
        if b is not None:
            b.stop()
    # Then attempt 2 ran, and found attempt 1's escaped process dead (zombie or gone):
    # A's guardian had killed its cgroup at 3/4 of the lease, though A was stopped
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["x"].attempts == 2
    assert final.steps["x"].outputs["first"] in ("gone", "Z"), final.steps["x"].outputs
