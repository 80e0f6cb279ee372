"""The docs/ pages stay true to the code: every key, command, module and setting is covered."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import click
import pytest

from runbook_celery.cli import cli
from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.definition.model import Defaults, Retries, Step, Workflow

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "definition-reference.md"


def _sections(text: str) -> dict[str, str]:
    """Level-2 sections of a Markdown page by heading text."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```$", text, flags=re.M | re.S)


# ---------------------------------------------------------------- definition reference


@pytest.mark.parametrize(
    ("section", "model"),
    [
        ("Workflow keys", Workflow),
        ("Step keys", Step),
        ("`retries` keys", Retries),
        ("`defaults` keys", Defaults),
    ],
)
def test_the_reference_documents_exactly_the_keys_of_each_model(section: str, model: type):
    body = _sections(REFERENCE.read_text(encoding="utf-8"))[section]
    documented = re.findall(r"^### `([^`]+)`$", body, flags=re.M)
    keys = [field.alias or name for name, field in model.model_fields.items()]
    assert sorted(documented) == sorted(keys)
    # and each key comes with an example
    for key, text in zip(documented, re.split(r"^### .+$", body, flags=re.M)[1:], strict=True):
        assert "```yaml" in text, f"{section}: `{key}` has no example"


def test_every_example_in_the_reference_is_a_valid_workflow():
    blocks = _yaml_blocks(REFERENCE.read_text(encoding="utf-8"))
    assert len(blocks) > 30
    for i, block in enumerate(blocks):
        load_workflow_text(block, file=f"{REFERENCE.name} example {i + 1}", base_dir=ROOT)


# ---------------------------------------------------------------- CLI reference


def _gen_cli_docs() -> ModuleType:
    path = ROOT / "scripts" / "gen_cli_docs.py"
    spec = importlib.util.spec_from_file_location("gen_cli_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_generated_from_the_current_cli():
    expected = _gen_cli_docs().render()
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == expected, (
        "docs/cli.md is stale: run python scripts/gen_cli_docs.py"
    )


def test_docs_cli_md_covers_every_registered_command():
    # Given the live group, with commands added by cli_control, cli_observe and cli_ecosystem
    names = cli.list_commands(click.Context(cli))
    assert {"validate", "cancel", "rerun", "logs", "schema"} <= set(names)
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name in names:
        assert f"## `runbook-celery {name}`" in text, name


# ---------------------------------------------------------------- architecture


def test_architecture_names_the_five_stages_in_order():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8").lower()
    headings = re.findall(r"^## \d\. (\w+)", text, flags=re.M)
    assert headings == ["definition", "compile", "execute", "record", "observe"]


LAYERS = ("core", "definition", "plan", "store", "engine", "client", "cli")


def test_architecture_places_every_module():
    """Every module at the package's root and in each layer's folder, by its path there
    (``engine/tasks.py``); the store's parts and web/ are described by their package."""
    package = ROOT / "runbook_celery"
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(p.name for p in package.glob("*.py"))
    modules += sorted(
        f"{layer}/{p.name}"
        for layer in LAYERS
        for p in (package / layer).glob("*.py")
        if p.name != "__init__.py" or layer == "cli"
    )
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not mention {missing}"
    for layer in LAYERS:
        assert f"`{layer}/`" in text, f"docs/architecture.md does not describe {layer}/"


# ---------------------------------------------------------------- deployment


def test_deployment_documents_every_runbook_setting():
    settings_source = (ROOT / "runbook_celery" / "core" / "settings.py").read_text(encoding="utf-8")
    variables = set(re.findall(r'"(RUNBOOK_[A-Z_]+)"', settings_source))
    assert len(variables) >= 10
    text = (DOCS / "deployment.md").read_text(encoding="utf-8")
    missing = sorted(v for v in variables if f"`{v}`" not in text)
    assert not missing, f"docs/deployment.md does not document {missing}"


@pytest.mark.parametrize(
    "needle",
    [
        "docker compose up -d --scale worker=N",
        "queue: gpu",
        "runbook-celery worker -Q gpu",
        "--appendonly yes",
        "--maxmemory-policy noeviction",
        "## What to watch in Flower",
    ],
)
def test_deployment_covers_operations(needle: str):
    assert needle in (DOCS / "deployment.md").read_text(encoding="utf-8")
