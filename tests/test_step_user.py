"""`worker --step-user`: refused clearly where it cannot work; steps run as that user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from runbook_celery.engine.stepuser import StepUser

pytestmark = pytest.mark.timeout(60)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="--step-user needs root")


def worker(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "runbook_celery", "worker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )


@needs_root
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--step-user", "nobody", "--uid", "nobody"), "--step-user and --uid do not go together"),
        (("--step-user", "nobody", "--uid=65534"), "--step-user and --uid do not go together"),
        (("--step-user", "no-such-user-rb"), "there is no user 'no-such-user-rb'"),
        (("--step-user", "root"), "name an unprivileged user"),
    ],
)
def test_a_step_user_that_cannot_work_is_refused_with_exit_2(args, fragment):
    res = worker(*args)
    assert res.returncode == 2, res.stderr
    assert fragment in res.stderr
    assert "Traceback" not in res.stderr


@needs_root
def test_a_worker_without_the_capabilities_to_switch_users_is_refused():
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) must be installed (.ci/run)"
    res = worker("--step-user", "nobody", prefix=(setpriv, "--bounding-set", "-kill", "--"))
    assert res.returncode == 2, res.stderr
    assert "needs the capabilities CAP_KILL" in res.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may switch users")
def test_a_worker_not_started_as_root_is_refused():
    res = worker("--step-user", "nobody")
    assert res.returncode == 2
    assert "needs a worker started as root" in res.stderr


def test_the_step_user_is_looked_up_with_its_groups():
    user = StepUser.lookup("nobody")
    assert (user.uid, user.name) == (65534, "nobody")
    assert 0 not in user.groups


@needs_root
def test_a_step_as_the_step_user_cannot_make_the_worker_read_a_file_for_it(tmp_path):
    # Given steps that run as nobody and point $RUNBOOK_OUTPUT at a file only root may read
    secret = tmp_path / "secret"
    secret.write_text("token=root-only\n")
    secret.chmod(0o600)
    code = (
        "import os, sys\n"
        "from runbook_celery.engine import runner, stepuser\n"
        "stepuser.use(stepuser.StepUser.lookup('nobody'))\n"
        "env = {'PATH': os.environ['PATH']}\n"
        "for cmd in sys.argv[1:]:\n"
        "    r = runner.run_bash(cmd, env)\n"
        "    print(r.exit_code, r.outputs, r.message, flush=True)\n"
    )
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            'echo "uid=$(id -u)" >> "$RUNBOOK_OUTPUT"',
            f'ln -s {secret} "$RUNBOOK_OUTPUT"',
            f'ln {secret} "$RUNBOOK_OUTPUT"',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=tmp_path,
    )
    ordinary, link, hard = res.stdout.splitlines()
    # Then outputs work as usual, and the worker reads no file through a link
    assert ordinary == "0 {'uid': '65534'} None"
    assert "must be a regular file, not a link" in link and "root-only" not in link
    assert "root-only" not in hard
