"""Credentials: a password URL (and rediss://) must never show in what users or logs see."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from reliability_infra import ROOT, RedisServer, Worker, free_port, kill_group, self_signed_cert

WORKFLOW = """
name: secret-check
steps:
  - id: hello
    run: |
      echo "hello from the step"
      echo "a line on stderr" >&2
      echo "greeting=hi" >> "$RUNBOOK_OUTPUT"
  - id: probe
    needs: [hello]
    run: |
      # does the step's environment carry the Redis credentials of its worker?
      if env | grep -v '^RUNBOOK_PROBE_NEEDLE=' | grep -qF -- "$RUNBOOK_PROBE_NEEDLE"; then
        leak=yes
      else
        leak=no
      fi
      echo "env_has_password=$leak" >> "$RUNBOOK_OUTPUT"
"""


def _env(server: RedisServer, password: str | None = None) -> dict[str, str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    url = server.url(0, password)
    tag = secrets.token_hex(4)
    return {
        **base,
        "RUNBOOK_REDIS_URL": url,
        "RUNBOOK_BROKER_URL": url,
        "RUNBOOK_PREFIX": f"relsec-{tag}",
        "RUNBOOK_QUEUE": f"relsec-{tag}",
        "RUNBOOK_LEASE_SECONDS": "4",
    }


def cli(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runbook_celery", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def security(workdir: Path) -> dict[str, Any]:
    """Run a workflow through a worker with a password URL; look for the password everywhere."""
    workdir.mkdir(parents=True, exist_ok=True)
    password = f"pw-{secrets.token_hex(12)}"
    wrong = f"wrong-{secrets.token_hex(12)}"
    server = RedisServer(workdir / "redis", password=password)
    env = _env(server)
    wf = workdir / "secret-check.yaml"
    wf.write_text(WORKFLOW)
    worker_env = {**env, "RUNBOOK_PROBE_NEEDLE": password}
    worker = Worker("secret", worker_env, workdir, concurrency=2)
    flower = None
    seen: dict[str, str] = {}
    try:
        worker.start()
        trig = cli(env, "trigger", str(wf), "--wait", "--json")
        seen["trigger --wait --json"] = trig.stdout + trig.stderr
        run_id = json.loads(trig.stdout)["id"] if trig.returncode == 0 else ""
        for name, args in {
            "status": ("status", run_id),
            "status --json": ("status", run_id, "--json"),
            "events --run --json": ("events", "--run", run_id, "--json"),
            "logs": ("logs", run_id),
            "runs --json": ("runs", "--json"),
        }.items():
            res = cli(env, *args)
            seen[name] = res.stdout + res.stderr
        flower, pages = _flower(env, workdir, worker.nodename)
        seen.update(pages)
        bad = {**env, **{k: env[k].replace(password, wrong) for k in _URL_VARS}}
        res = cli(bad, "trigger", str(wf))
        seen["trigger, wrong password (error)"] = res.stdout + res.stderr
        wrong_exit = res.returncode
        res = cli(bad, "status", run_id or "x")
        seen["status, wrong password (error)"] = res.stdout + res.stderr
        wrong_status_exit = res.returncode
        broker_only = {
            **env,
            "RUNBOOK_BROKER_URL": env["RUNBOOK_BROKER_URL"].replace(password, wrong),
        }
        res = cli(broker_only, "trigger", str(wf))
        seen["trigger, wrong broker password (error)"] = res.stdout + res.stderr
    finally:
        kill_group(flower)
        worker.stop()
        seen["worker log"] = worker.logs()
        server.stop()
    leaks = {
        place: [w for w in (password, wrong) if w in text]
        for place, text in seen.items()
        if password in text or wrong in text
    }
    record = json.loads(seen["status --json"]) if run_id else {}
    env_leak = (record.get("steps", {}).get("probe", {}).get("outputs", {})).get("env_has_password")
    ok = bool(run_id) and not leaks and wrong_exit == 3 and record.get("status") == "succeeded"
    return {
        "run_status": record.get("status"),
        "places_checked": sorted(seen),
        "empty_places": sorted(p for p, t in seen.items() if not t.strip()),
        "unavailable_places": sorted(p for p, t in seen.items() if t.startswith("(unavailable")),
        "leaks": leaks,
        "wrong_password_trigger_exit": wrong_exit,
        "wrong_password_status_exit": wrong_status_exit,
        "wrong_password_message": seen["trigger, wrong password (error)"].strip()[-300:],
        "step_env_has_password": env_leak,
        "clean": ok,
    }


_URL_VARS = ("RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL")


def _flower(
    env: dict[str, str], workdir: Path, nodename: str
) -> tuple[subprocess.Popen[bytes] | None, dict[str, str]]:
    """Start Flower on our broker and fetch the pages that show the broker and workers."""
    port = free_port()
    with open(workdir / "flower.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runbook_celery", "flower", "--port", str(port)],
            cwd=ROOT,
            env={**env, "FLOWER_UNAUTHENTICATED_API": "true"},  # so the JSON API can be read
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pages: dict[str, str] = {}
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/healthcheck", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    for path in (
        "/",
        "/broker",
        "/workers",
        "/tasks",
        f"/worker/{nodename}",
        "/api/workers?refresh=1",
        "/api/tasks",
    ):
        try:
            pages[f"flower {path}"] = (
                urllib.request.urlopen(base + path, timeout=20).read().decode("utf-8", "replace")
            )
        except OSError as exc:
            pages[f"flower {path}"] = f"(unavailable: {exc})"
    kill_group(proc)
    pages["flower log"] = (workdir / "flower.log").read_text(errors="replace")
    return None, pages


def tls(workdir: Path) -> dict[str, Any]:
    """A run end to end over rediss:// (self-signed certificate, password too)."""
    from reliability_infra import redis_binary

    workdir.mkdir(parents=True, exist_ok=True)
    binary = redis_binary(tls=True)
    if binary is None:
        return {"skipped": "no redis-server built with TLS on this machine", "clean": True}
    cert = self_signed_cert(workdir)
    if cert is None:
        return {"skipped": "no openssl command to make a certificate", "clean": True}
    password = f"pw-{secrets.token_hex(12)}"
    server = RedisServer(workdir / "redis", password=password, tls=cert, binary=binary)
    env = _env(server)
    wf = workdir / "secret-check.yaml"
    wf.write_text(WORKFLOW)
    worker = Worker("tls", {**env, "RUNBOOK_PROBE_NEEDLE": password}, workdir, concurrency=2)
    try:
        worker.start()
        trig = cli(env, "trigger", str(wf), "--wait", "--json")
        status = cli(env, "status", json.loads(trig.stdout)["id"]) if trig.returncode == 0 else None
    except RuntimeError as exc:
        return {"clean": False, "error": str(exc)[-1500:], "redis_server": binary}
    finally:
        worker.stop()
        server.stop()
    text = trig.stdout + trig.stderr + (status.stdout if status else "") + worker.logs()
    return {
        "redis_server": binary,
        "url_shape": "rediss://:***@127.0.0.1:PORT/0?ssl_cert_reqs=required&ssl_ca_certs=CA.pem",
        "trigger_exit": trig.returncode,
        "trigger_tail": (trig.stdout + trig.stderr)[-600:],
        "password_leaked": password in text,
        "clean": trig.returncode == 0 and password not in text,
    }
