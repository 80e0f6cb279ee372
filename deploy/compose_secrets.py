#!/usr/bin/env python3
"""The `secrets` step of docker-compose.yml: passwords for Redis and Flower, made once.

`docker compose up` must work with no variables set, yet Redis needs a password and Flower
a login. This one-shot service (run as root, before everything else) makes them on the first
start, keeps them in two volumes on later starts, and prints the Flower login the one time it
is generated. Standard library only: it also runs outside the image (tests/).

    WORKER_DIR/redis-url        root, 0400: read by the worker while it is still root, before
                                it drops to `runbook` (--uid); its steps cannot read it
    SERVICE_DIR/redis.conf      uid 999 (redis in the official image), 0400: `requirepass`
    SERVICE_DIR/redis-url       uid 10001 (runbook), 0400: for beat and Flower
    SERVICE_DIR/flowerconfig.py uid 10001, 0400: Flower's `basic_auth`, read with --conf
    SERVICE_DIR/.redis-password root, 0400: the password itself, kept for the next start

FLOWER_USER (default runbook) and FLOWER_PASSWORD, when set, replace the generated login.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

RUNBOOK_UID = 10001  # the image's `runbook` user (Dockerfile)
REDIS_UID = 999  # the `redis` user of the official redis image
REDIS_HOST = "redis:6379/0"
FLOWER_URL = "http://127.0.0.1:5555"


def write_private(path: Path, text: str, uid: int) -> None:
    """Replace ``path`` with ``text``, readable by ``uid`` alone, never briefly by others."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chown(tmp, uid, uid)
    os.replace(tmp, path)


def _kept_or_new(path: Path) -> tuple[str, bool]:
    """The password stored at ``path``, or a new one (and True)."""
    if path.is_file() and (stored := path.read_text(encoding="utf-8").strip()):
        return stored, False
    return secrets.token_hex(24), True


def _flower_password(service_dir: Path, env: dict[str, str]) -> tuple[str, bool]:
    """FLOWER_PASSWORD, else the one of the last start, else a new one (and True)."""
    if env.get("FLOWER_PASSWORD"):
        return env["FLOWER_PASSWORD"], False
    return _kept_or_new(service_dir / ".flower-password")


def make_secrets(worker_dir: Path, service_dir: Path, env: dict[str, str]) -> str | None:
    """Write every file; returns the Flower login when it was generated just now."""
    user = env.get("FLOWER_USER") or "runbook"
    if ":" in user:
        raise SystemExit(f"FLOWER_USER {user!r} must not contain ':'")
    for directory in (worker_dir, service_dir):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
    redis_password, _ = _kept_or_new(service_dir / ".redis-password")
    flower_password, generated = _flower_password(service_dir, env)
    url = f"redis://:{redis_password}@{REDIS_HOST}\n"
    write_private(service_dir / ".redis-password", redis_password + "\n", 0)
    write_private(service_dir / "redis.conf", f"requirepass {redis_password}\n", REDIS_UID)
    write_private(service_dir / "redis-url", url, RUNBOOK_UID)
    write_private(worker_dir / "redis-url", url, 0)
    # a Python file (Flower's --conf format); repr() keeps any password a plain string
    config = f"basic_auth = [{f'{user}:{flower_password}'!r}]\n"
    write_private(service_dir / "flowerconfig.py", config, RUNBOOK_UID)
    if env.get("FLOWER_PASSWORD"):
        (service_dir / ".flower-password").unlink(missing_ok=True)
    else:
        write_private(service_dir / ".flower-password", flower_password + "\n", 0)
    return f"{user}:{flower_password}" if generated else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worker_dir", type=Path)
    parser.add_argument("service_dir", type=Path)
    args = parser.parse_args(argv)
    login = make_secrets(args.worker_dir, args.service_dir, dict(os.environ))
    if login is not None:
        user, password = login.split(":", 1)
        print(
            f"Flower: {FLOWER_URL}  user: {user}  password: {password}\n"
            "(shown this once; to see it again: docker compose exec flower "
            "cat /secrets/flowerconfig.py; to choose your own, set FLOWER_PASSWORD)",
            flush=True,
        )
    else:
        print("secrets: kept from the last start", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
