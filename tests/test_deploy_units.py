"""deploy/: the systemd unit (systemd-analyze verify) and the Kubernetes manifests (the
Kubernetes OpenAPI schemas, strictly, through the kubernetes-validate test dependency),
plus what the deployment promises: who runs as root, where the Redis URL comes from."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from runbook_celery.cli import cli

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "runbook-worker@.service"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")  # the oldest and newest minor we check against
RUNBOOK_UID = 10001


def _assert_runbook_command(argv: list[str]) -> None:
    """``argv`` is a runbook-celery command line the live CLI accepts."""
    assert Path(argv[0]).name == "runbook-celery", argv
    ctx = cli.make_context("runbook-celery", argv[1:], resilient_parsing=True)
    command = cli.get_command(ctx, argv[1])
    assert command is not None, f"runbook-celery has no command {argv[1]!r}"
    args = [str(ROOT / "definitions") if a == "/app/definitions" else a for a in argv[2:]]
    command.make_context(argv[1], args, parent=ctx)


def _drops_to_runbook(argv: list[str]) -> bool:
    return argv[argv.index("--uid") + 1] == "runbook" and argv[argv.index("--gid") + 1] == "runbook"


# ---------------------------------------------------------------------- systemd


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_systemd_verifies_the_worker_unit_without_a_warning(tmp_path: Path):
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze, "systemd-analyze must be installed (.ci/run installs systemd)"
    # an instance of the template, with ExecStart's program at a path that exists here
    text = UNIT.read_text(encoding="utf-8").replace(
        "/opt/runbook/bin/runbook-celery", sys.executable
    )
    instance = tmp_path / "runbook-worker@1.service"
    instance.write_text(text)
    res = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


def test_systemd_verify_would_notice_a_mistake(tmp_path: Path):
    # the check above is not vacuous: an unknown key or a bad value is reported
    text = UNIT.read_text(encoding="utf-8").replace(
        "/opt/runbook/bin/runbook-celery", sys.executable
    )
    instance = tmp_path / "runbook-worker@1.service"
    instance.write_text(text.replace("KillMode=mixed", "KillMode=gently\nTimeoutStopSecs=90"))
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "kill mode specification" in res.stderr and "TimeoutStopSecs" in res.stderr, res.stderr


def test_the_unit_starts_a_worker_that_drops_to_runbook_and_stops_gracefully():
    service = _unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    _assert_runbook_command(argv)
    assert argv[1] == "worker" and _drops_to_runbook(argv)
    assert "User" not in service  # root until Celery drops: see tests/test_deploy_privileges.py
    environment = shlex.split(service["Environment"])
    assert "RUNBOOK_REDIS_URL_FILE=/etc/runbook/redis-url" in environment
    assert "RUNBOOK_REDIS_URL=" not in UNIT.read_text(encoding="utf-8")
    # SIGTERM to the worker only, and time for RUNBOOK_SHUTDOWN_GRACE (60 s) before SIGKILL
    assert service["KillMode"] == "mixed" and int(service["TimeoutStopSec"]) > 60
    assert service["CapabilityBoundingSet"].split() == ["CAP_SETUID", "CAP_SETGID"]


# ------------------------------------------------------------------- Kubernetes


def _documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def _deployment(name: str) -> dict[str, Any]:
    found = [
        d for _, d in _documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == name
    ]
    assert len(found) == 1, name
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("where", "document"), _documents(), ids=[w for w, _ in _documents()])
def test_each_manifest_matches_the_kubernetes_schema_strictly(where, document, version):
    # strict: an unknown or misspelt field is an error, not silently dropped by the API server
    kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_check_would_notice_a_misspelt_field():
    document = _deployment("runbook-beat")
    broken = yaml.safe_load(yaml.safe_dump(document))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_there_are_a_worker_a_beat_and_a_flower():
    assert {
        _container(_deployment(f"runbook-{c}"))["name"] for c in ("worker", "beat", "flower")
    } == {
        "worker",
        "beat",
        "flower",
    }
    images = {
        _container(_deployment(f"runbook-{c}"))["image"] for c in ("worker", "beat", "flower")
    }
    assert len(images) == 1  # one image


@pytest.mark.parametrize("component", ["worker", "beat", "flower"])
def test_each_command_exists_and_reads_the_url_from_a_secret_file(component: str):
    deployment = _deployment(f"runbook-{component}")
    container = _container(deployment)
    _assert_runbook_command(container["command"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert not {"RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL"} & set(env)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/secrets")
    assert env["RUNBOOK_REDIS_URL_FILE"] == "/secrets/redis-url" and mount["readOnly"] is True
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_only_the_worker_starts_as_root_and_it_drops_to_runbook_before_any_step():
    worker = _deployment("runbook-worker")
    container = _container(worker)
    assert container["securityContext"]["runAsUser"] == 0
    assert container["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["SETUID", "SETGID"],
    }
    assert _drops_to_runbook(container["command"])
    (volume,) = worker["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["defaultMode"] == 0o400  # root's alone: steps run as runbook
    assert "fsGroup" not in worker["spec"]["template"]["spec"].get("securityContext", {})
    for name in ("runbook-beat", "runbook-flower"):
        pod = _deployment(name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == RUNBOOK_UID


def test_worker_pods_reap_orphans_and_let_running_steps_finish():
    pod = _deployment("runbook-worker")["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True  # the pause container is PID 1 (compose: init)
    assert pod["terminationGracePeriodSeconds"] > 60  # RUNBOOK_SHUTDOWN_GRACE


def test_exactly_one_beat_even_during_a_rollout():
    beat = _deployment("runbook-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}


def test_flower_keeps_its_state_on_a_volume_and_requires_a_login():
    flower = _deployment("runbook-flower")
    container = _container(flower)
    assert "--conf=/secrets/flowerconfig.py" in container["command"]
    assert "--persistent=True" in container["command"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in flower["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in _documents()}
    assert claims == ["runbook-flower-data"] and ("PersistentVolumeClaim", claims[0]) in kinds
    assert ("Service", "runbook-flower") in kinds
