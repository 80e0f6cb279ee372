"""Containment without a worker: run_bash in a process of its own, as a pool process runs it.

Each test starts a Python process that chooses a containment (cgroup needs root, as CI
runs), runs one step through run_bash, and reports; the step starts a process that
leaves its process group and writes that process's pid to a file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_containment_e2e import ESCAPES, gone

from runbook_celery.engine import containment

pytestmark = pytest.mark.timeout(60)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroup v2 is writable by root here")


def _step_process(
    tmp_path: Path,
    mode: str,
    command: str,
    before: str = "",
    after: str = "",
    extra: list[str] | None = None,
    inside: Path | None = None,
) -> subprocess.Popen[str]:
    """A Python process like a pool process: containment ``mode``, then one step."""
    code = (
        "import os, sys\n"
        "from runbook_celery.engine import containment, guardian, runner, stepprocess\n"
        f"box = containment.setup({mode!r})\n"
        "print(box.mode, box.root, flush=True)\n"
        f"{before}\n"
        "r = runner.run_bash(sys.argv[1], {'PATH': os.environ['PATH']}"
        f"{after})\n"
        "print(r.exit_code, r.reason, r.message, flush=True)\n"
    )
    # started inside the cgroup ``inside``, when given, by a shell that moves itself there
    enter = [] if inside is None else ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"']
    return subprocess.Popen(
        [*enter, *([str(inside)] if inside else []), sys.executable, "-c", code, command]
        + (extra or []),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )


def _escape(tmp_path: Path, how: str, then: str = "") -> tuple[str, Path]:
    pid = tmp_path / "escaped.pid"
    return f"{ESCAPES[how].format(pid=pid)}\nuntil [ -s {pid} ]; do sleep 0.02; done\n{then}", pid


@pytest.mark.parametrize("mode", [pytest.param("cgroup", marks=needs_root), "subreaper"])
@pytest.mark.parametrize("how", list(ESCAPES))
def test_an_escaped_process_dies_when_its_step_ends(tmp_path, mode, how):
    # Given a step that leaves a process behind that left its process group, and exits 0
    command, pid_file = _escape(tmp_path, how)
    proc = _step_process(tmp_path, mode, command)
    out, _ = proc.communicate(timeout=30)
    # Then the step succeeded, and that process is gone with it
    assert out.split("\n")[0].startswith(mode), out
    assert out.split("\n")[1].startswith("0 None"), out
    assert gone(int(pid_file.read_text())), f"{how}: escaped process survived ({mode})"


@needs_root
@pytest.mark.parametrize("how", list(ESCAPES))
def test_when_the_process_running_a_step_is_killed_its_guardian_ends_the_cgroup(tmp_path, how):
    # Given a step (cgroup mode) whose child escaped its process group
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    command, pid_file = _escape(tmp_path, how, f"echo go > {fifo}; sleep 300")
    proc = _step_process(tmp_path, "cgroup", command)
    with open(fifo) as fh:
        assert fh.read() == "go\n"
    # When the process running it is SIGKILLed (no Python code runs any more)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()  # type: ignore[union-attr]
    # Then the guardian killed the step's cgroup: the escaped process died too
    assert gone(int(pid_file.read_text())), f"{how}: escaped process survived"


# A tick that, once the escaped process exists, fences the step (KILL below) and then
# blocks, as a hung pool process would, until that process is gone: what ended it was not
# run_bash's own clean-up, which only runs after the tick returns.
FENCE_TICK = """
import select
pg = []
def tick():
    pid_file = sys.argv[2]
    if not (os.path.exists(pid_file) and os.path.getsize(pid_file)):
        return False
    escaped = int(open(pid_file).read())
    fd = os.pidfd_open(escaped)
    print('escaped uid:', os.stat(f'/proc/{escaped}').st_uid, flush=True)
    KILL
    gone = bool(select.select([fd], [], [], 20)[0])
    print('escaped gone while the pool process hung:', gone, flush=True)
    return True
"""


@needs_root
@pytest.mark.parametrize(
    "kill",
    [
        "guardian.GUARDIAN.deadline(pg[0], 0)",  # the guardian's hard fence (lease not renewed)
        "stepprocess.signal_step(pg[0], 9)",  # the lease keeper: superseded
    ],
)
@pytest.mark.parametrize("user", ["root", "nobody"])
def test_a_lease_fence_ends_processes_that_left_the_group(kill, user):
    # Given a step (cgroup mode; as root, or as the step user nobody, in a folder nobody may
    # write) whose child escaped its process group
    tmp_path = Path(tempfile.mkdtemp(prefix="rbtest-fence-"))
    tmp_path.chmod(0o777)
    command, pid_file = _escape(tmp_path, "double-fork", "sleep 300")
    as_user = (
        "from runbook_celery.engine import stepuser\n"
        "stepuser.use(stepuser.StepUser.lookup('nobody'))\n"
    )
    proc = _step_process(
        tmp_path,
        "cgroup",
        command,
        before=(as_user if user == "nobody" else "") + FENCE_TICK.replace("KILL", kill),
        after=", on_spawn=pg.append, tick=tick, tick_interval=0.05",
        extra=[str(pid_file)],
    )
    try:
        # When its lease is lost and the fence kills it while the pool process hangs
        out, _ = proc.communicate(timeout=40)
        # Then the escaped process (running as the step's user) died of the fence itself
        uid = 0 if user == "root" else 65534
        assert f"escaped uid: {uid}\n" in out, out
        assert "escaped gone while the pool process hung: True" in out, out
        assert gone(int(pid_file.read_text()))
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


@needs_root
def test_a_new_worker_ends_the_steps_a_dead_worker_left_in_its_cgroup(tmp_path):
    # Given a worker cgroup with a running step whose worker and guardian are both gone (in
    # a cgroup of this test's, so that no live worker on this machine sweeps it first)
    mount = containment._cgroup2_mount()
    parent = Path(mount) / f"rbtest-{os.getpid()}-{tmp_path.name}"
    parent.mkdir()
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    command, pid_file = _escape(tmp_path, "setsid", f"echo go > {fifo}; sleep 300")
    proc = _step_process(tmp_path, "cgroup", command, inside=parent)
    try:
        root = proc.stdout.readline().split()[1]  # type: ignore[union-attr]
        assert Path(root).parent == parent
        with open(fifo) as fh:
            assert fh.read() == "go\n"
        for pid in _guardians(proc.pid):
            os.kill(pid, signal.SIGKILL)  # no guardian: the OOM killer took it, say
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        escaped = int(pid_file.read_text())
        assert not gone(escaped, within=0.5), "nothing should have killed it yet"
        # When another worker chooses its containment next to it
        swept = containment.sweep(str(parent))
        # Then the dead worker's cgroup is ended and removed
        assert swept == [Path(root).name]
        assert gone(escaped)
        assert not os.path.exists(root)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        containment.sweep(str(parent))
        containment.remove_cgroup(str(parent))


def _guardians(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent(int(entry)) == parent:
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if argv[0] == b"bash" and b"guardian" in argv:
                    found.append(int(entry))
    return found


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return 0


def test_cgroup_containment_where_none_is_writable_is_a_clear_error(monkeypatch):
    def no_cgroup() -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(containment, "_make_worker_cgroup", no_cgroup)
    monkeypatch.setattr(containment, "_current", None)
    with pytest.raises(containment.ContainmentError) as info:
        containment.setup("cgroup")
    assert "RUNBOOK_CONTAINMENT=subreaper" in info.value.strerror
    assert containment.setup("auto").mode == "subreaper"


def test_a_subreaper_kills_only_what_the_step_left_not_its_other_children(tmp_path):
    # Given a process with a child of its own (started before the step) in subreaper mode
    command, pid_file = _escape(tmp_path, "setsid")
    before = "import subprocess\nmine = subprocess.Popen(['sleep', '30'])\n"
    after = ");print('mine alive:', mine.poll() is None, flush=True);mine.kill(\n"
    proc = _step_process(tmp_path, "subreaper", command, before=before, after=after)
    out, _ = proc.communicate(timeout=30)
    # Then what the step left is gone, the process's own child is not
    assert "mine alive: True" in out, out
    assert gone(int(pid_file.read_text()))
