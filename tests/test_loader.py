"""From YAML to a validated workflow: every problem found, each with file, line, path and step."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook_celery.core.errors import InvalidDefinition, Problem
from runbook_celery.definition.loader import load_workflow, load_workflow_text

pytestmark = pytest.mark.timeout(20)

DEFINITIONS = Path(__file__).resolve().parent.parent / "definitions"


def problems(text: str) -> list[Problem]:
    """Every problem ``text`` has, in the order reported."""
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(text, file="wf.yaml")
    assert info.value.problems, "InvalidDefinition without problems"
    return info.value.problems


def only_problem(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, [p.render() for p in found]
    return found[0]


def steps(*bodies: str) -> str:
    """A workflow named ``t`` whose steps are the given YAML snippets (already indented)."""
    return "name: t\nsteps:\n" + "".join(bodies)


# ---------------------------------------------------------------- valid definitions


@pytest.mark.parametrize("path", sorted(DEFINITIONS.glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_example_definitions_are_valid(path):
    loaded = load_workflow(path)
    assert loaded.workflow.steps
    assert loaded.base_dir == path.parent


def test_a_valid_workflow_loads_with_its_graph():
    loaded = load_workflow_text(
        "name: ok\n"
        "params:\n  who: world\n"
        "steps:\n"
        "  - id: a\n    run: echo ${{ params.who }}\n"
        "  - id: b\n    needs: a\n    run: echo ${{ steps.a.outputs.x }}\n"
        "  - id: c\n    needs: [b]\n    run: echo ${{ steps.a.outputs.x }}\n",
        file="ok.yaml",
    )
    assert loaded.workflow.name == "ok"
    assert loaded.workflow.step_ids == ["a", "b", "c"]
    assert loaded.workflow.step("b").needs == ["a"]  # a single need may be a string
    assert loaded.graph.ancestors("c") == {"a", "b"}
    assert loaded.file == "ok.yaml"


def test_steps_may_need_steps_defined_after_them():
    loaded = load_workflow_text(
        steps("  - id: b\n    needs: [a]\n    run: echo\n", "  - id: a\n    run: echo\n")
    )
    assert loaded.graph.topological() == ["a", "b"]


def test_env_values_may_be_numbers_and_booleans_and_become_text():
    loaded = load_workflow_text(
        "name: t\nenv:\n  N: 3\n  F: 1.5\n  B: true\nsteps:\n  - id: a\n    run: echo\n"
    )
    assert loaded.workflow.env == {"N": "3", "F": "1.5", "B": "true"}


# ---------------------------------------------------------------- the file as a whole


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")]
)
def test_the_top_level_must_be_a_mapping(text, kind):
    problem = only_problem(text)
    assert problem.line == 1
    assert problem.message == f"expected a mapping of workflow keys, got {kind}"


def test_an_empty_file_is_a_problem_on_line_1():
    problem = only_problem("")
    assert (problem.file, problem.line) == ("wf.yaml", 1)
    assert "file is empty" in problem.message


def test_a_yaml_syntax_error_is_one_problem_with_its_line():
    problem = only_problem("name: t\nsteps:\n  - id: a\n    run: [oops\n")
    assert problem.line == 5
    assert problem.message.startswith("YAML syntax error:")


def test_a_duplicate_key_is_reported_with_its_line():
    problem = only_problem(steps("  - id: a\n    run: echo\n    id: b\n"))
    assert (problem.line, problem.path) == (5, "steps[0].id")
    assert problem.message == "duplicate key 'id'"


def test_problems_from_files_carry_the_file_name(tmp_path):
    path = tmp_path / "deploy.yaml"
    path.write_text(steps("  - id: a\n    needs: [biuld]\n    run: echo\n"))
    with pytest.raises(InvalidDefinition) as info:
        load_workflow(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert problem.render() == f"{path}:4: steps[0].needs[0]: unknown step 'biuld'"


def test_a_missing_file_is_an_invalid_definition(tmp_path):
    with pytest.raises(InvalidDefinition) as info:
        load_workflow(tmp_path / "nope.yaml")
    assert info.value.problems[0].message == "file not found"


# ---------------------------------------------------------------- keys


def test_an_unknown_top_level_key_suggests_the_nearest_one():
    problem = only_problem("name: t\ndescripton: x\nsteps:\n  - id: a\n    run: echo\n")
    assert problem.line == 2
    assert problem.message == "unknown key 'descripton' (did you mean 'description'?)"


def test_an_unknown_step_key_suggests_the_nearest_one_and_names_the_step():
    problem = only_problem(steps("  - id: build\n    run: echo\n    neds: [x]\n"))
    assert (problem.line, problem.path, problem.step_id) == (5, "steps[0]", "build")
    assert problem.message == "unknown key 'neds' (did you mean 'needs'?)"


def test_an_unknown_key_far_from_any_known_one_gets_no_suggestion():
    problem = only_problem(steps("  - id: a\n    run: echo\n    zzzzzz: 1\n"))
    assert problem.message == "unknown key 'zzzzzz'"


def test_a_yaml_boolean_word_as_a_key_is_reported_as_written():
    problem = only_problem(steps("  - id: a\n    run: echo\n    yes: 1\n"))
    assert problem.message == "unknown key 'yes'"


def test_an_unknown_key_in_a_nested_block_suggests_the_nearest_one():
    found = problems(steps("  - id: a\n    run: echo\n    retries:\n      limt: 3\n"))
    unknown = [p for p in found if "unknown key" in p.message]
    assert unknown[0].message == "unknown key 'limt' (did you mean 'limit'?)"
    assert unknown[0].line == 6


def test_missing_name_and_steps_are_reported():
    found = problems("description: only\n")
    assert {p.message for p in found} == {
        "missing required key 'name'",
        "missing required key 'steps'",
    }
    assert all(p.line == 1 for p in found)


# ---------------------------------------------------------------- wrong types at every level


@pytest.mark.parametrize(
    ("text", "line", "path", "fragment"),
    [
        ("name: [a]\nsteps:\n  - id: a\n    run: echo\n", 1, "name", "valid string (got list)"),
        ("name: 7\nsteps:\n  - id: a\n    run: echo\n", 1, "name", "valid string (got int)"),
        (
            "name: t\ndescription: {a: 1}\nsteps:\n  - id: a\n    run: echo\n",
            2,
            "description",
            "valid string (got dict)",
        ),
        ("name: t\nsteps: hello\n", 2, "steps", "valid list (got str)"),
        ("name: t\nsteps:\n  a: 1\n", 2, "steps", "valid list (got dict)"),
        ("name: t\nsteps:\n", 2, "steps", "valid list (got NoneType)"),
        ("name: t\nsteps: []\n", 2, "steps", "at least 1 item"),
        ("name: t\nsteps:\n  - echo hi\n", 3, "steps[0]", "valid dictionary"),
        ("name: t\nsteps:\n  -\n", 3, "steps[0]", "valid dictionary"),
        (
            "name: t\nenv: [A=1]\nsteps:\n  - id: a\n    run: echo\n",
            2,
            "env",
            "valid dictionary (got list)",
        ),
        (
            "name: t\nenv:\n  A: {b: c}\nsteps:\n  - id: a\n    run: echo\n",
            3,
            "env.A",
            "valid string (got dict)",
        ),
        (
            "name: t\nparams: [a]\nsteps:\n  - id: a\n    run: echo\n",
            2,
            "params",
            "valid dictionary (got list)",
        ),
        (steps("  - id: [a]\n    run: echo\n"), 3, "steps[0].id", "valid string (got list)"),
        (steps("  - id: a\n    run: 5\n"), 4, "steps[0].run", "valid string (got int)"),
        (steps("  - id: a\n    run:\n      x: y\n"), 4, "steps[0].run", "valid string (got dict)"),
        (steps("  - id: a\n    script: [a.sh]\n"), 4, "steps[0].script", "valid string"),
        (
            steps("  - id: a\n    name: [x]\n    run: echo\n"),
            4,
            "steps[0].name",
            "valid string (got list)",
        ),
        (
            steps("  - id: a\n    needs: {b: 1}\n    run: echo\n"),
            4,
            "steps[0].needs",
            "valid list (got dict)",
        ),
        (
            steps("  - id: a\n    needs: [b, 3]\n    run: echo\n", "  - id: b\n    run: echo\n"),
            4,
            "steps[0].needs[1]",
            "valid string (got int)",
        ),
        (
            steps("  - id: a\n    env: [X]\n    run: echo\n"),
            4,
            "steps[0].env",
            "valid dictionary (got list)",
        ),
        (
            steps("  - id: a\n    env:\n      X: [1]\n    run: echo\n"),
            5,
            "steps[0].env.X",
            "valid string (got list)",
        ),
        (
            steps("  - id: a\n    working_dir: {x: 1}\n    run: echo\n"),
            4,
            "steps[0].working_dir",
            "valid string (got dict)",
        ),
    ],
)
def test_wrong_types_are_reported_at_their_line_and_path(text, line, path, fragment):
    problem = only_problem(text)
    assert (problem.line, problem.path) == (line, path), problem.render()
    assert fragment in problem.message


def test_a_param_value_that_is_not_a_scalar_is_one_problem():
    problem = only_problem("name: t\nparams:\n  p: [1, 2]\nsteps:\n  - id: a\n    run: echo\n")
    assert (problem.line, problem.path) == (3, "params.p")
    assert "string, number or boolean" in problem.message


def test_an_invalid_environment_variable_name_is_reported_at_the_name():
    problem = only_problem("name: t\nenv:\n  1BAD: x\nsteps:\n  - id: a\n    run: echo\n")
    assert (problem.line, problem.path) == (3, "env.1BAD")
    assert "pattern" not in problem.message


def test_an_invalid_environment_variable_name_is_reported_on_its_line():
    found = problems("name: t\nenv:\n  1BAD: x\nsteps:\n  - id: a\n    run: echo\n")
    assert [p.line for p in found] == [3]


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "bad_id", ["'build step'", "9lives", "'a.b'", "'ünï'", "''", "a" * 65, "'-dash'"]
)
def test_step_ids_with_illegal_characters_are_refused(bad_id):
    problem = only_problem(steps(f"  - id: {bad_id}\n    run: echo\n"))
    assert (problem.line, problem.path) == (3, "steps[0].id")
    assert problem.message.startswith("must start with a letter or '_'")


def test_a_workflow_name_with_illegal_characters_is_refused():
    problem = only_problem("name: my workflow\nsteps:\n  - id: a\n    run: echo\n")
    assert (problem.line, problem.path) == (1, "name")
    assert problem.message.startswith("must start with a letter or '_'")


def test_a_step_without_an_id_is_refused_at_the_step():
    problem = only_problem(steps("  - run: echo\n"))
    assert (problem.line, problem.path) == (3, "steps[0]")
    assert problem.message == "missing required key 'id'"


def test_duplicate_step_ids_point_at_the_second_and_name_the_first():
    problem = only_problem(steps("  - id: a\n    run: echo\n", "  - id: a\n    run: echo\n"))
    assert (problem.line, problem.path, problem.step_id) == (5, "steps[1].id", "a")
    assert problem.message == "duplicate step id 'a' (first at steps[0])"


# ---------------------------------------------------------------- run and script


def test_a_step_needs_run_or_script():
    problem = only_problem(steps("  - id: a\n    name: nothing to do\n"))
    assert (problem.line, problem.path, problem.step_id) == (3, "steps[0]", "a")
    assert problem.message == "step 'a' needs either 'run' or 'script'"


def test_a_step_cannot_have_both_run_and_script():
    problem = only_problem(steps("  - id: a\n    run: echo\n    script: a.sh\n"))
    assert (problem.line, problem.path) == (3, "steps[0]")
    assert problem.message == "step 'a' has both 'run' and 'script'; keep one"


@pytest.mark.parametrize("blank", ["''", "'   '", "|\n      \n"])
def test_run_must_not_be_blank(blank):
    problem = only_problem(steps(f"  - id: a\n    run: {blank}\n"))
    assert (problem.line, problem.path) == (4, "steps[0].run")
    assert "must not be empty" in problem.message


# ---------------------------------------------------------------- needs and cycles


def test_an_unknown_need_suggests_the_nearest_step():
    problem = only_problem(
        steps("  - id: build\n    run: echo\n", "  - id: ship\n    needs: [biuld]\n    run: echo\n")
    )
    assert (problem.line, problem.path, problem.step_id) == (6, "steps[1].needs[0]", "ship")
    assert problem.message == "unknown step 'biuld' (did you mean 'build'?)"


def test_a_step_that_needs_itself_is_refused():
    problem = only_problem(steps("  - id: a\n    needs: [a]\n    run: echo\n"))
    assert (problem.line, problem.path) == (4, "steps[0].needs[0]")
    assert problem.message == "step 'a' needs itself"


def test_a_need_listed_twice_is_refused():
    problem = only_problem(
        steps("  - id: a\n    run: echo\n", "  - id: b\n    needs: [a, a]\n    run: echo\n")
    )
    assert (problem.line, problem.path) == (6, "steps[1].needs[1]")
    assert problem.message == "'a' is listed twice"


def test_a_cycle_names_its_steps_in_order():
    problem = only_problem(
        steps(
            "  - id: start\n    run: echo\n",
            "  - id: a\n    needs: [start, c]\n    run: echo\n",
            "  - id: b\n    needs: [a]\n    run: echo\n",
            "  - id: c\n    needs: [b]\n    run: echo\n",
        )
    )
    assert (problem.line, problem.path, problem.step_id) == (6, "steps[1].needs", "a")
    assert problem.message == "dependency cycle: a -> c -> b -> a (each needs the next)"


def test_a_long_cycle_names_all_of_its_steps():
    body = [f"  - id: s{i}\n    needs: [s{(i + 1) % 12}]\n    run: echo\n" for i in range(12)]
    problem = only_problem(steps(*body))
    chain = " -> ".join(f"s{i}" for i in [*range(12), 0])
    assert problem.message == f"dependency cycle: {chain} (each needs the next)"
    assert problem.line == 4


def test_every_needs_problem_is_reported_not_just_the_first():
    found = problems(
        steps(
            "  - id: a\n    needs: [zz]\n    run: echo\n",
            "  - id: b\n    needs: [yy]\n    run: echo\n",
            "  - id: a\n    run: echo\n",
        )
    )
    assert [(p.line, p.message) for p in found] == [
        (4, "unknown step 'zz'"),
        (7, "unknown step 'yy'"),
        (9, "duplicate step id 'a' (first at steps[0])"),
    ]


def test_every_type_problem_is_reported_not_just_the_first():
    found = problems("name: 5\nsteps:\n  - id: a\n    run: [1]\n  - id: b b\n    run: echo\n")
    assert [(p.line, p.path) for p in found] == [
        (1, "name"),
        (4, "steps[0].run"),
        (5, "steps[1].id"),
    ]


# ---------------------------------------------------------------- expressions


def expr_problem(run: str, *, params: str = "", before: str = "", needs: str = "") -> Problem:
    text = "name: t\n" + params + "steps:\n" + before
    text += f"  - id: s\n{needs}    run: {run}\n"
    return only_problem(text)


def test_an_unknown_param_lists_the_known_ones():
    problem = expr_problem("echo ${{ params.regoin }}", params="params:\n  region: eu\n")
    assert (problem.line, problem.path, problem.step_id) == (6, "steps[0].run", "s")
    assert problem.message == "${{ params.regoin }}: unknown param 'regoin' (params: region)"


def test_an_output_of_a_step_not_needed_is_refused():
    problem = expr_problem("echo ${{ steps.a.outputs.x }}", before="  - id: a\n    run: echo\n")
    assert (problem.line, problem.path) == (6, "steps[1].run")
    assert "step 's' does not need 'a'; add it to 'needs'" in problem.message


def test_an_output_of_a_step_needed_transitively_is_fine():
    load_workflow_text(
        steps(
            "  - id: a\n    run: echo\n",
            "  - id: b\n    needs: [a]\n    run: echo\n",
            "  - id: c\n    needs: [b]\n    run: echo ${{ steps.a.outputs.x }}\n",
        )
    )


def test_an_output_of_an_unknown_step_is_refused():
    problem = expr_problem("echo ${{ steps.ghost.outputs.x }}")
    assert problem.message == "${{ steps.ghost.outputs.x }}: unknown step 'ghost'"


def test_an_unterminated_expression_is_refused_at_its_field():
    problem = expr_problem("echo ${{ params.p")
    assert (problem.line, problem.path) == (4, "steps[0].run")
    assert problem.message == "unterminated expression '${{ params.p' (missing '}}')"


def test_an_unknown_function_is_refused():
    problem = expr_problem("echo ${{ hashFiles('x') }}")
    assert problem.message.startswith("unknown function hashFiles()")


def test_status_functions_are_refused_outside_if():
    problem = expr_problem("echo ${{ success() }}")
    assert "status functions belong in 'if:' only" in problem.message


@pytest.mark.parametrize("ref", ["matrix.os", "item"])
def test_matrix_and_item_are_refused_outside_a_fanned_out_step(ref):
    problem = expr_problem(f"echo ${{{{ {ref} }}}}")
    assert (problem.line, problem.path) == (4, "steps[0].run")
    assert f"'{ref}' is only available in a step with" in problem.message


def test_expressions_in_step_env_are_checked_too():
    problem = only_problem(
        steps(
            "  - id: a\n    run: echo\n",
            "  - id: b\n    env:\n      TAG: v-${{ steps.a.outputs.tag }}\n    run: echo\n",
        )
    )
    assert (problem.line, problem.path, problem.step_id) == (7, "steps[1].env.TAG", "b")
    assert "does not need 'a'" in problem.message


def test_workflow_env_may_use_params_only():
    problem = only_problem(
        "name: t\nenv:\n  A: ${{ steps.a.outputs.x }}\nsteps:\n  - id: a\n    run: echo\n"
    )
    assert (problem.line, problem.path, problem.step_id) == (3, "env.A", None)
    assert "workflow-level env may use params only" in problem.message


def test_each_bad_reference_in_a_field_is_its_own_problem():
    found = problems(steps("  - id: a\n    run: echo ${{ params.q }} ${{ params.r }}\n"))
    assert [p.message.split(":")[0] for p in found] == ["${{ params.q }}", "${{ params.r }}"]


def test_a_hostile_expression_is_a_problem_not_a_crash():
    problem = expr_problem("echo ${{ " + "(" * 5000 + "true" + ")" * 5000 + " }}")
    assert problem.path == "steps[0].run"


@pytest.mark.parametrize("expr", ["params.a == 'x'", "'literal'", "!params.a", "toJSON(params.a)"])
def test_a_computed_expression_is_accepted_in_a_command(expr):
    text = f"name: t\nparams:\n  a: x\nsteps:\n  - id: s\n    run: echo ${{{{ {expr} }}}}\n"
    assert load_workflow_text(text).workflow.steps[0].run


def test_a_computed_expression_in_arithmetic_is_refused():
    problem = expr_problem(
        "echo $(( ${{ format('{0}', params.a) }} + 1 ))", params="params:\n  a: x\n"
    )
    assert (problem.line, problem.path) == (6, "steps[0].run")


def test_the_status_of_a_step_not_needed_is_refused():
    problem = expr_problem("echo ${{ steps.a.status }}", before="  - id: a\n    run: echo\n")
    assert "step 's' does not need 'a'; add it to 'needs'" in problem.message


def test_the_status_of_an_unknown_step_is_refused():
    assert "unknown step 'nope'" in expr_problem("echo ${{ steps.nope.status }}").message


@pytest.mark.parametrize("ref", ["run.status", "needs", "steps.a.status"])
def test_workflow_level_env_cannot_read_statuses(ref):
    text = "name: t\nenv:\n  X: ${{ " + ref + " }}\nsteps:\n  - id: a\n    run: echo\n"
    assert "workflow-level env may use params only" in only_problem(text).message


def test_for_each_may_be_fromjson_of_a_param():
    text = (
        "name: t\nparams:\n  l: '[1]'\nsteps:\n  - id: a\n"
        "    for_each: ${{ fromJSON(params.l) }}\n    run: echo\n"
    )
    assert load_workflow_text(text).workflow.steps[0].for_each


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("${{ steps.nope.outputs.x }}", "unknown step 'nope'"),
        ("${{ params.nope }}", "unknown param 'nope'"),
        ("${{ matrix.k }}", "workflow outputs read params"),
        ("${{ success() }}", "status functions belong in 'if:' only"),
    ],
)
def test_workflow_outputs_are_checked(value, fragment):
    text = f"name: t\noutputs:\n  o: {value}\nsteps:\n  - id: a\n    run: echo\n"
    problem = only_problem(text)
    assert fragment in problem.message
    assert problem.line == 3


def test_loading_the_same_file_again_reuses_its_validation_but_sees_every_edit(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: t\nsteps:\n  - id: a\n    run: echo one\n")
    first = load_workflow(wf)
    assert load_workflow(wf) is first  # same bytes: validated once
    wf.write_text("name: t\nsteps:\n  - id: a\n    run: echo two\n")
    assert load_workflow(wf).workflow.steps[0].run == "echo two"
    wf.write_text("name: t\nsteps:\n  - id: a\n    needs: [zz]\n    run: echo\n")
    with pytest.raises(InvalidDefinition):
        load_workflow(wf)
    with pytest.raises(InvalidDefinition):  # and again: errors are never cached as success
        load_workflow(wf)


def test_a_cached_workflow_still_has_its_script_checked_on_every_load(tmp_path):
    (tmp_path / "job.sh").write_text("echo fine\n")
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: t\nsteps:\n  - id: a\n    script: job.sh\n")
    load_workflow(wf)
    (tmp_path / "job.sh").write_bytes(b"echo \x00\n")
    with pytest.raises(InvalidDefinition, match="NUL"):
        load_workflow(wf)
