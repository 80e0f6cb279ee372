"""The JSON Schema of the definition format: generated from the models, shipped, used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runbook_celery.cli import cli
from runbook_celery.cli.ecosystem import SCHEMA_FILE, schema_text, workflow_schema
from runbook_celery.definition.loader import load_workflow
from runbook_celery.definition.model import Defaults, Retries, Step, Workflow

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = sorted((ROOT / "definitions").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=../runbook_celery/schema.json"
REGENERATE = "runbook-celery schema > runbook_celery/schema.json"


def _validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema checks the schema itself")
    schema = workflow_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_schema_command_prints_the_schema_generated_from_the_models():
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == workflow_schema()
    assert printed["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert printed["$id"] and printed["title"]
    generated = Workflow.model_json_schema(by_alias=True)
    assert printed["properties"] == generated["properties"]
    assert printed["$defs"] == generated["$defs"]


def test_committed_schema_json_is_current():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        f"runbook_celery/schema.json is stale; regenerate it with: {REGENERATE}"
    )


def test_the_schema_names_every_key_of_every_model_under_its_yaml_name():
    schema = workflow_schema()
    sections = {
        Workflow: schema,
        Step: schema["$defs"]["Step"],
        Retries: schema["$defs"]["Retries"],
        Defaults: schema["$defs"]["Defaults"],
    }
    for model, section in sections.items():
        expected = {field.alias or name for name, field in model.model_fields.items()}
        assert set(section["properties"]) == expected, model.__name__
        assert section["additionalProperties"] is False, model.__name__
    assert "if" in sections[Step]["properties"]  # the alias, not the Python name if_


def test_the_schema_is_a_valid_draft_7_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema checks the schema itself")
    jsonschema.Draft7Validator.check_schema(workflow_schema())


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.name)
def test_every_example_points_editors_at_the_schema_and_is_valid(path: Path):
    # Given a shipped example, its first line is the YAML language server's schema modeline
    assert path.read_text(encoding="utf-8").splitlines()[0] == MODELINE
    # and the relative path in it reaches the committed schema
    target = (path.parent / MODELINE.split("$schema=", 1)[1]).resolve()
    assert target == SCHEMA_FILE.resolve()
    # Then runbook-celery accepts it, and so does the schema an editor would use
    load_workflow(path)
    errors = list(_validator().iter_errors(_yaml(path)))
    assert not errors, [e.message for e in errors]


def test_there_are_examples_to_check():
    assert len(DEFINITIONS) >= 3


def test_the_schema_rejects_what_the_models_reject(tmp_path: Path):
    validator = _validator()
    # Given documents that break the models' rules in ways an editor can see
    bad = {
        "unknown top-level key": {"name": "x", "steps": [{"id": "a", "run": "true"}], "stepz": []},
        "unknown step key": {"name": "x", "steps": [{"id": "a", "run": "true", "nedds": []}]},
        "missing name": {"steps": [{"id": "a", "run": "true"}]},
        "no steps": {"name": "x", "steps": []},
        "bad id": {"name": "x", "steps": [{"id": "1 bad", "run": "true"}]},
        "retries without limit": {"name": "x", "steps": [{"id": "a", "run": "t", "retries": {}}]},
        "negative timeout": {"name": "x", "steps": [{"id": "a", "run": "t", "timeout": -1}]},
    }
    for why, doc in bad.items():
        # Then the schema refuses each
        assert list(validator.iter_errors(doc)), why


def test_the_schema_accepts_the_shorthands_the_loader_accepts(tmp_path: Path):
    # Given a workflow using `needs: ID` and a numeric env value, which validate accepts
    text = "name: x\nenv: {PORT: 8080}\nsteps:\n  - id: a\n    run: t\n  - id: b\n    needs: a\n"
    text += "    run: t\n"
    path = tmp_path / "short.yaml"
    path.write_text(text)
    load_workflow(path)
    # Then an editor using the schema must not flag it either
    assert not [e.message for e in _validator().iter_errors(_yaml(path))]
