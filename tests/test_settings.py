"""Settings: every RUNBOOK_* variable is checked once, and a bad one is a clear error (exit 2).

Connection URLs can come from files (RUNBOOK_REDIS_URL_FILE, RUNBOOK_BROKER_URL_FILE), so
that a worker need not keep a password in its environment, where steps could read it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUEUE, ROOT, SESSION
from own_redis import own_redis

from runbook_celery.core import settings as settings_module
from runbook_celery.core.errors import EXIT_INVALID, EXIT_UNAVAILABLE, InvalidSetting
from runbook_celery.core.settings import HIDDEN_FROM_STEPS, Settings, warn_of_passwords_in_env

pytestmark = pytest.mark.timeout(60)


def refused(env: dict[str, str]) -> list[str]:
    with pytest.raises(InvalidSetting) as info:
        Settings.from_env(env)
    assert info.value.exit_code == EXIT_INVALID
    return info.value.problems


def test_unset_variables_give_the_documented_defaults():
    assert Settings.from_env({}) == Settings()


def test_well_formed_values_are_read():
    s = Settings.from_env(
        {
            "RUNBOOK_REDIS_URL": "rediss://u:p@redis.example:6380/2",
            "RUNBOOK_BROKER_URL": "amqp://guest:guest@rabbit:5672//",
            "RUNBOOK_PREFIX": "{team-a}",
            "RUNBOOK_QUEUE": "gpu.batch",
            "RUNBOOK_OUTPUT_LIMIT": "2048",
            "RUNBOOK_MAX_FILE_BYTES": " 4096 ",
            "RUNBOOK_VISIBILITY_TIMEOUT": "7200",
            "RUNBOOK_RETENTION": "3600",
            "RUNBOOK_LOG_LINES": "50",
            "RUNBOOK_LOG_BYTES": "1048576",
            "RUNBOOK_LEASE_SECONDS": "9",
            "RUNBOOK_MAX_ATTEMPTS": "2",
            "RUNBOOK_KILL_GRACE": "0.5",
            "RUNBOOK_SHUTDOWN_GRACE": "0",
            "RUNBOOK_CONTAINMENT": "Subreaper",
        }
    )
    assert (s.redis_url, s.broker_url) == (
        "rediss://u:p@redis.example:6380/2",
        "amqp://guest:guest@rabbit:5672//",
    )
    assert (s.prefix, s.default_queue) == ("{team-a}", "gpu.batch")
    assert (s.output_limit, s.max_file_bytes, s.visibility_timeout, s.retention) == (
        2048,
        4096,
        7200,
        3600,
    )
    assert (s.log_lines, s.lease_seconds, s.max_attempts) == (50, 9, 2)
    assert s.log_bytes == 1024 * 1024
    assert (s.kill_grace, s.shutdown_grace) == (0.5, 0.0)
    assert s.containment == "subreaper"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("RUNBOOK_MAX_FILE_BYTES", "2MB", "not a whole number; write digits only"),
        ("RUNBOOK_MAX_FILE_BYTES", "0", "out of range; it must be from 1"),
        ("RUNBOOK_OUTPUT_LIMIT", "1e6", "not a whole number"),
        ("RUNBOOK_OUTPUT_LIMIT", "1_000", "not a whole number"),
        ("RUNBOOK_RETENTION", "7d", "not a whole number"),
        ("RUNBOOK_RETENTION", "-1", "out of range"),
        ("RUNBOOK_LOG_LINES", "ten", "not a whole number"),
        ("RUNBOOK_LOG_BYTES", "4MiB", "not a whole number; write digits only"),
        ("RUNBOOK_LOG_BYTES", "1000", "out of range; it must be from 65536 to 1073741824"),
        ("RUNBOOK_VISIBILITY_TIMEOUT", "99999999999", "out of range"),
        ("RUNBOOK_LEASE_SECONDS", "1", "out of range; it must be from 3 to 86400"),
        ("RUNBOOK_LEASE_SECONDS", "2.5", "not a whole number"),
        ("RUNBOOK_MAX_ATTEMPTS", "0", "out of range"),
        ("RUNBOOK_KILL_GRACE", "nan", "not a number of seconds"),
        ("RUNBOOK_KILL_GRACE", "inf", "not a number of seconds"),
        ("RUNBOOK_KILL_GRACE", "10s", "not a number of seconds"),
        ("RUNBOOK_SHUTDOWN_GRACE", "-5", "out of range; it must be from 0"),
        ("RUNBOOK_SHUTDOWN_GRACE", "1e9", "not a number of seconds"),
        ("RUNBOOK_PREFIX", "my prefix", "letters, digits"),
        ("RUNBOOK_PREFIX", "run*", "letters, digits"),
        ("RUNBOOK_QUEUE", "a" * 129, "1 to 128"),
        ("RUNBOOK_QUEUE", "", "is set but empty"),
        ("RUNBOOK_REDIS_URL", "http://127.0.0.1:6379/0", "unsupported URL scheme http://"),
        ("RUNBOOK_REDIS_URL", "127.0.0.1:6379", "unsupported URL scheme"),
        ("RUNBOOK_REDIS_URL", "amqp://h//", "use redis:// or rediss://"),
        ("RUNBOOK_REDIS_URL", "redis://h:port/0", "not a valid URL"),
        ("RUNBOOK_BROKER_URL", "sqs://queue", "unsupported URL scheme sqs://"),
        ("RUNBOOK_CONTAINMENT", "cgroups", "not one of auto, cgroup, subreaper"),
    ],
)
def test_a_malformed_value_is_an_error_naming_the_variable(name, value, fragment):
    (problem,) = refused({name: value})
    assert problem.startswith(f"{name}=") or problem.startswith(f"{name} ")
    assert fragment in problem


def test_every_bad_variable_is_reported_at_once():
    problems = refused({"RUNBOOK_LOG_LINES": "x", "RUNBOOK_KILL_GRACE": "y"})
    assert [p.split("=")[0] for p in problems] == ["RUNBOOK_LOG_LINES", "RUNBOOK_KILL_GRACE"]


def test_a_password_in_a_bad_url_is_not_shown():
    (problem,) = refused({"RUNBOOK_REDIS_URL": "redis://:s3cret@h:port/0"})
    assert "s3cret" not in problem and ":***@" in problem


def test_the_repr_of_settings_masks_passwords():
    s = Settings(redis_url="redis://:s3cret@h/0", broker_url="amqp://u:s3cret@h//")
    assert "s3cret" not in repr(s)


# ---------------------------------------------------------------- credential files


def test_a_url_file_is_read_and_its_trailing_newline_dropped(tmp_path: Path):
    redis_file, broker_file = tmp_path / "redis-url", tmp_path / "broker-url"
    redis_file.write_text("redis://:s3cret@redis.internal:6379/3\n")
    broker_file.write_text("amqp://u:s3cret@rabbit//\n")
    s = Settings.from_env(
        {"RUNBOOK_REDIS_URL_FILE": str(redis_file), "RUNBOOK_BROKER_URL_FILE": str(broker_file)}
    )
    assert s.redis_url == "redis://:s3cret@redis.internal:6379/3"
    assert s.broker_url == "amqp://u:s3cret@rabbit//"


def test_the_broker_defaults_to_the_redis_url_from_its_file(tmp_path: Path):
    (tmp_path / "url").write_text("redis://:s3cret@redis.internal:6379/3")
    s = Settings.from_env({"RUNBOOK_REDIS_URL_FILE": str(tmp_path / "url")})
    assert s.broker_url == s.redis_url == "redis://:s3cret@redis.internal:6379/3"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read the file: No such file or directory"),
        ("", "the file is empty"),
        ("redis://a/0\nredis://b/0\n", "one URL on one line"),
        ("http://h/", "unsupported URL scheme http://"),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
)
def test_a_bad_url_file_is_an_error_naming_its_variable(tmp_path: Path, content, fragment):
    path = tmp_path / "url"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    (problem,) = refused({"RUNBOOK_REDIS_URL_FILE": str(path)})
    assert problem.startswith(f"RUNBOOK_REDIS_URL_FILE={str(path)!r}: ")
    assert fragment in problem


def test_a_url_and_its_file_together_are_refused(tmp_path: Path):
    (tmp_path / "url").write_text("redis://h/0")
    env = {"RUNBOOK_BROKER_URL": "redis://h/0", "RUNBOOK_BROKER_URL_FILE": str(tmp_path / "url")}
    assert refused(env) == ["set RUNBOOK_BROKER_URL or RUNBOOK_BROKER_URL_FILE, not both"]


def test_a_worker_warns_once_of_a_password_in_its_environment(monkeypatch, caplog):
    monkeypatch.setattr(settings_module, "_warned", set())
    env = {"RUNBOOK_REDIS_URL": "redis://:s3cret@h/0", "RUNBOOK_BROKER_URL": "amqp://u:s3cret@r//"}
    with caplog.at_level(logging.WARNING, logger="runbook_celery.settings"):
        assert warn_of_passwords_in_env(env) == ["RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL"]
        assert warn_of_passwords_in_env(env) == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "RUNBOOK_REDIS_URL carries a password in the worker's environment" in messages[0]
    assert "set RUNBOOK_REDIS_URL_FILE to its path instead" in messages[0]
    assert not any("s3cret" in m for m in messages)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"RUNBOOK_REDIS_URL": "redis://127.0.0.1:6379/0"},
        {"RUNBOOK_REDIS_URL": "redis://user@h/0"},
        {"RUNBOOK_BROKER_URL": "amqp://guest@rabbit//"},
        {"RUNBOOK_REDIS_URL_FILE": "/run/secrets/redis-url"},
    ],
)
def test_no_warning_without_a_password_in_the_environment(monkeypatch, caplog, env):
    monkeypatch.setattr(settings_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="runbook_celery.settings"):
        assert warn_of_passwords_in_env(env) == []
    assert caplog.records == []


def test_steps_see_neither_the_urls_nor_where_their_files_are():
    assert set(HIDDEN_FROM_STEPS) == {
        "RUNBOOK_REDIS_URL",
        "RUNBOOK_BROKER_URL",
        "RUNBOOK_REDIS_URL_FILE",
        "RUNBOOK_BROKER_URL_FILE",
    }


# ---------------------------------------------------------------- the real command


def cli(
    *args: str, env: dict[str, str], drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-m", "runbook_celery", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**full, **env},
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("worker",),
        ("validate", "definitions/diamond.yaml"),
        ("trigger", "definitions/diamond.yaml"),
        ("status", "no-such-run"),
        ("runs",),
        ("cancel", "no-such-run"),
    ],
)
def test_a_command_with_a_bad_setting_exits_2_with_one_line_naming_it(args):
    res = cli(*args, env={"RUNBOOK_MAX_FILE_BYTES": "2MB"})
    assert res.returncode == EXIT_INVALID, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.splitlines() == [
        "error: invalid setting RUNBOOK_MAX_FILE_BYTES='2MB': not a whole number; write digits "
        "only, e.g. RUNBOOK_MAX_FILE_BYTES=2097152 (no units, signs or separators)"
    ]


def test_the_cli_reaches_a_password_protected_redis_through_a_url_file(tmp_path: Path):
    with own_redis(password="s3cret-pw") as url:
        (tmp_path / "url").write_text(url + "\n")
        ok = cli(
            "runs",
            env={"RUNBOOK_REDIS_URL_FILE": str(tmp_path / "url")},
            drop=("RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL"),
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stderr == "no runs\n"  # and no warning: the password is not in the env
        (tmp_path / "url").write_text(url.replace("s3cret-pw", "wrong-pw"))
        bad = cli(
            "runs",
            env={"RUNBOOK_REDIS_URL_FILE": str(tmp_path / "url")},
            drop=("RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL"),
        )
    assert bad.returncode == EXIT_UNAVAILABLE, bad.stderr
    assert "wrong-pw" not in bad.stderr and "Traceback" not in bad.stderr


def test_a_command_other_than_the_worker_does_not_warn():
    # only a worker has steps that could read its environment
    with own_redis(password="s3cret-pw") as url:
        res = cli("runs", env={"RUNBOOK_REDIS_URL": url, "RUNBOOK_BROKER_URL": url})
    assert res.returncode == 0, res.stderr
    assert res.stderr == "no runs\n"


STEP_LOOKS_FOR_THE_PASSWORD = """
name: snoop
steps:
  - id: look
    run: |
      if tr '\\0' '\\n' < /proc/$PPID/environ | grep -q s3cret-pw; then
        echo "the worker's environment holds the password"; exit 1
      fi
"""


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runbook_celery",
                "worker",
                "-c",
                "1",
                "-Q",
                QUEUE,
                "-n",
                f"creds-{SESSION}@localhost",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_snoop(env: dict[str, str], tmp_path: Path, url: str) -> tuple[str, str]:
    """Trigger the snooping step on ``env``'s worker; its final status and the worker log."""
    (tmp_path / "snoop.yaml").write_text(STEP_LOOKS_FOR_THE_PASSWORD)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "runbook_celery",
                "trigger",
                str(tmp_path / "snoop.yaml"),
                "--wait",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
            check=False,
        )
    finally:
        stop(worker)
    assert res.returncode in (0, 1), res.stderr
    status = "succeeded" if res.returncode == 0 else "failed"
    return status, (tmp_path / "worker.log").read_text(errors="replace")


def without_urls() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in HIDDEN_FROM_STEPS}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_with_the_url_in_the_environment_a_step_finds_the_password_and_the_worker_warns(
    tmp_path: Path,
):
    with own_redis(password="s3cret-pw") as url:
        env = {**without_urls(), "RUNBOOK_REDIS_URL": url}
        status, log = run_snoop(env, tmp_path, url)
    assert status == "failed"  # the step read the password from its worker's environment
    assert "RUNBOOK_REDIS_URL carries a password in the worker's environment" in log
    assert "s3cret-pw" not in log


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_with_the_url_in_a_file_no_step_finds_the_password_in_the_environment(tmp_path: Path):
    with own_redis(password="s3cret-pw") as url:
        (tmp_path / "redis-url").write_text(url + "\n")
        env = {**without_urls(), "RUNBOOK_REDIS_URL_FILE": str(tmp_path / "redis-url")}
        status, log = run_snoop(env, tmp_path, url)
    assert status == "succeeded", log[-3000:]
    assert "carries a password" not in log


@pytest.mark.parametrize("args", [("worker",), ("logs", "no-such-run")])
def test_a_bad_log_byte_budget_exits_2_naming_it(args):
    res = cli(*args, env={"RUNBOOK_LOG_BYTES": "4MB"})
    assert res.returncode == EXIT_INVALID, res.stderr
    assert res.stderr.splitlines() == [
        "error: invalid setting RUNBOOK_LOG_BYTES='4MB': not a whole number; write digits "
        "only, e.g. RUNBOOK_LOG_BYTES=4194304 (no units, signs or separators)"
    ]
