"""The worker as docker-compose.yml, the systemd unit and the Kubernetes manifests run it.

Each starts `runbook-celery worker --uid USER --gid GROUP` as root with the Redis URL (and
its password) in a file only root can read. The claim those deployments rest on: the worker
reads the file while still root, then Celery drops to USER before taking a step, and a step
(running as USER) can read neither the file nor its worker's memory, environment or maps,
because a process that changed its uid is not dumpable. This test runs exactly that against
a password-protected Redis, with no container engine.

The unprivileged user is ``nobody``. The Python that runs the worker may sit under
directories ``nobody`` cannot enter (``/root/.pyenv``, a 0700 CI folder), so the worker
starts in a private mount namespace where each such directory is covered by a tmpfs that
holds only the entries leading to what the worker needs; nothing outside changes.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import QUEUE, ROOT, SESSION
from own_redis import own_redis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NOBODY = 65534
PASSWORD = "compose-s3cret"
URL_VARIABLES = ("RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL")

SNOOP = """
name: snoop
steps:
  - id: look
    run: |
      echo "uid=$(id -u)" >> "$RUNBOOK_OUTPUT"
      echo "worker=$(awk '/^Uid:/ {print $2}' /proc/$PPID/status)" >> "$RUNBOOK_OUTPUT"
      if cat "$URL_FILE" >/dev/null 2>&1; then r=yes; else r=no; fi
      echo "file=$r" >> "$RUNBOOK_OUTPUT"
      for what in environ maps mem; do
        if head -c 1 /proc/$PPID/$what >/dev/null 2>&1; then r=yes; else r=no; fi
        echo "$what=$r" >> "$RUNBOOK_OUTPUT"
      done
"""


def _traversable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXOTH)


def _blocked_parents(paths: list[Path]) -> dict[Path, set[str]]:
    """Each directory ``nobody`` cannot enter on the way to ``paths``, with the names of
    its entries that lead there."""
    blocked: dict[Path, set[str]] = {}
    for path in paths:
        path = path.resolve()
        for parent, child in zip(
            reversed(path.parents), [*[*reversed(path.parents)][1:], path], strict=True
        ):
            if not _traversable(parent):
                blocked.setdefault(parent, set()).add(child.name)
    return blocked


def _unlock_script(paths: list[Path], stash: Path) -> str:
    """Shell lines (run as root in a private mount namespace) that let ``nobody`` reach
    ``paths``: each blocked directory is put aside, covered by a world-enterable tmpfs, and
    only its entries on the way are bound back in."""
    lines = ["set -e", "mount --make-rprivate /"]
    for n, (directory, names) in enumerate(
        sorted(_blocked_parents(paths).items(), key=lambda i: len(i[0].parts))
    ):
        aside = stash / str(n)
        lines += [f"mkdir -p {aside}", f"mount --bind {shlex.quote(str(directory))} {aside}"]
        lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(directory))}")
        for name in sorted(names):
            inside, original = directory / name, aside / name
            make = "mkdir" if inside.is_dir() else "touch"
            lines += [
                f"{make} {shlex.quote(str(inside))}",
                f"mount --bind {shlex.quote(str(original))} {shlex.quote(str(inside))}",
            ]
    return "\n".join(lines)


def _needed_paths() -> list[Path]:
    """What the worker reads after dropping to ``nobody``: its interpreter, libraries, code."""
    candidates = [Path(sys.executable), Path(sys.prefix), Path(sys.base_prefix), ROOT]
    candidates += [Path(p) for p in sys.path if p]
    candidates += [Path(p) for p in sysconfig.get_paths().values()]
    return [p for p in dict.fromkeys(candidates) if p.exists()]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder anyone may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=f"rbtest-priv-{SESSION}-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def _start_worker(env: dict[str, str], log: Path, stash: Path) -> subprocess.Popen[bytes]:
    worker = [
        sys.executable,
        "-m",
        "runbook_celery",
        "worker",
        "-c",
        "1",
        "-Q",
        QUEUE,
        "-n",
        f"priv-{SESSION}@localhost",
        "--without-gossip",
        "--without-mingle",
        "--uid",
        str(NOBODY),
        "--gid",
        str(NOBODY),
    ]
    script = _unlock_script(_needed_paths(), stash) + f"\nexec {shlex.join(worker)}\n"
    with log.open("wb") as out:
        return subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", script],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_a_worker_started_as_root_with_uid_keeps_its_url_file_from_its_steps(open_dir: Path):
    assert os.geteuid() == 0, "the deployments start the worker as root; so must this test"
    with own_redis(password=PASSWORD) as url:
        # Given the URL in a file only root can read, as the compose `secrets` service writes it
        secret = open_dir / "secrets"
        secret.mkdir(mode=0o755)
        url_file = secret / "redis-url"
        url_file.write_text(url + "\n")
        url_file.chmod(0o400)
        (open_dir / "defs").mkdir(mode=0o755)
        definition = open_dir / "defs" / "snoop.yaml"
        definition.write_text(SNOOP)
        definition.chmod(0o644)
        env = {k: v for k, v in os.environ.items() if k not in URL_VARIABLES}
        env |= {"RUNBOOK_REDIS_URL_FILE": str(url_file), "URL_FILE": str(url_file)}
        # When a worker starts as root with --uid nobody and a run of the snooping step ends
        worker = _start_worker(env, open_dir / "worker.log", open_dir / "stash")
        try:
            res = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "runbook_celery",
                    "trigger",
                    str(definition),
                    "--wait",
                    "--timeout",
                    "90",
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=150,
                cwd=ROOT,
                env=env,
                check=False,
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        log = (open_dir / "worker.log").read_text(errors="replace")
    assert res.returncode == 0, f"{res.stderr}\n--- worker log\n{log[-4000:]}"
    outputs = json.loads(res.stdout)["steps"]["look"]["outputs"]
    # Then the worker reached the password-protected Redis, yet it and its step run as nobody
    assert outputs["uid"] == str(NOBODY) and outputs["worker"] == str(NOBODY), outputs
    # and the step could read neither the URL file nor its worker's environment or memory
    assert outputs == {
        "uid": str(NOBODY),
        "worker": str(NOBODY),
        "file": "no",
        "environ": "no",
        "maps": "no",
        "mem": "no",
    }
    assert PASSWORD not in log
