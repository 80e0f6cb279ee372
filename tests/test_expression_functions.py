"""GitHub Actions' value functions in ``${{ }}``: the examples of GitHub's own documentation
("Expressions: Functions") give the expected results."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runbook_celery.definition import expressions as ex


def run(source: str, **values: Any) -> Any:
    def resolve(ref: ex.Ref) -> Any:
        return values[ref.text().replace(".", "_")]

    return ex.evaluate(ex.parse(source), resolve)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # GitHub's documented examples
        ("contains('Hello world', 'llo')", True),
        ("contains(fromJSON('[\"push\", \"pull_request\"]'), 'push')", True),
        ("startsWith('Hello world', 'He')", True),
        ("endsWith('Hello world', 'ld')", True),
        ("format('Hello {0} {1} {2}', 'Mona', 'the', 'Octocat')", "Hello Mona the Octocat"),
        ("format('{{Hello {0} {1} {2}!}}', 'Mona', 'the', 'Octocat')", "{Hello Mona the Octocat!}"),
        ("join(fromJSON('[\"bug\", \"help wanted\"]'), ', ')", "bug, help wanted"),
        # string comparison ignores case; values are cast to text
        ("contains('Hello World', 'WORLD')", True),
        ("startsWith('Release-1.2', 'release')", True),
        ("endsWith('x.TAR.GZ', '.tar.gz')", True),
        ("contains('abc', 'd')", False),
        ("contains(fromJSON('[1, 2, 3]'), 2)", True),
        ("contains(fromJSON('[\"A\"]'), 'a')", True),
        ("contains(fromJSON('[\"ab\"]'), 'a')", False),  # array membership, not substring
        ("startsWith(12345, 12)", True),
        ("join('only text')", "only text"),
        ("join(fromJSON('[1, true, \"x\"]'))", "1,true,x"),
        ("fromJSON('3') == 3", True),
        ("fromJSON('true')", True),
        ('fromJSON(\'{"a": {"b": "deep"}}\').a.b', "deep"),
        ("fromJSON('{\"Name\": 1}').name", 1),  # property names ignore case, as GitHub's
        ("fromJSON('{\"a\": 1}').missing", None),
        ("toJSON('x')", '"x"'),
        ("FROMJSON('[1]')", [1]),  # function names ignore case
        ("!contains('abc', 'b') || endsWith('abc', 'c')", True),
    ],
)
def test_functions_follow_githubs_semantics(source: str, expected: Any) -> None:
    assert run(source) == expected


def test_tojson_of_a_needs_statuses_object_is_pretty_json_that_round_trips() -> None:
    statuses = {"build": "succeeded", "test": "failed"}
    text = run("toJSON(steps.a.outputs)", steps_a_outputs=statuses)
    assert text == json.dumps(statuses, indent=2)
    assert run("fromJSON(toJSON(steps.a.outputs)).test", steps_a_outputs=statuses) == "failed"


def test_functions_read_references() -> None:
    assert run("contains(params.labels, 'bug')", params_labels='["bug", "docs"]') is True
    assert run("format('{0}-{1}', params.a, params.b)", params_a="x", params_b=2) == "x-2"
    assert run("fromJSON(params.cfg).region", params_cfg='{"region": "eu"}') == "eu"


def test_refs_and_calls_see_inside_function_arguments() -> None:
    node = ex.parse("contains(toJSON(steps.a.outputs), params.p) && failure()")
    assert [r.text() for r in ex.refs(node)] == ["steps.a.outputs", "params.p"]
    assert ex.calls(node) == {"failure"}


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("contains('a')", "contains() takes 2 arguments, got 1"),
        ("toJSON()", "toJSON() takes 1 argument, got 0"),
        ("join(1, 2, 3)", "join() takes 1 to 2 arguments, got 3"),
        ("contains('a', 'b'", "expected ')'"),
        ("contains('a',, 'b')", "unexpected ','"),
        ("hashFiles('x')", "unknown function hashFiles()"),
    ],
)
def test_malformed_calls_say_what_is_wrong(source: str, fragment: str) -> None:
    with pytest.raises(ex.ExpressionError, match=None) as info:
        ex.parse(source)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("fromJSON('{oops')", "fromJSON(): not JSON"),
        ("format('{1}', 'a')", "format(): {1} has no argument"),
        ("format('{', 'a')", "unmatched '{'"),
    ],
)
def test_bad_values_are_evaluation_errors_not_crashes(source: str, fragment: str) -> None:
    with pytest.raises(ex.EvaluationError) as info:
        run(source)
    assert fragment in str(info.value)


# Step outputs are untrusted text: JSON that json.loads refuses other than with a
# JSONDecodeError (an integer past Python's digit limit: a plain ValueError; nesting past
# the recursion limit: RecursionError) is still just "not JSON".
_HUGE_INT = "1" * 5000
_TOO_DEEP = "[" * 100_000


@pytest.mark.parametrize("text", [_HUGE_INT, _TOO_DEEP], ids=["huge-int", "too-deep"])
def test_fromjson_of_json_that_python_refuses_is_an_evaluation_error(text: str) -> None:
    with pytest.raises(ex.EvaluationError, match=r"fromJSON\(\): not JSON"):
        run("fromJSON(steps.a.outputs.v)", steps_a_outputs_v=text)


@pytest.mark.parametrize(
    ("source", "text", "expected"),
    [
        ("contains(steps.a.outputs.v, '[')", _TOO_DEEP, True),  # not a list: text
        ("join(steps.a.outputs.v, '')", _TOO_DEEP, _TOO_DEEP),
        ("steps.a.outputs.v.key", '{"key": ' + _TOO_DEEP, None),  # not an object
    ],
    ids=["contains", "join", "property"],
)
def test_json_too_deep_to_read_is_text_where_text_is_allowed(
    source: str, text: str, expected: Any
) -> None:
    assert run(source, steps_a_outputs_v=text) == expected


def test_a_short_expression_cannot_build_a_huge_value() -> None:
    big = "x" * (ex.MAX_VALUE_CHARS // 2 + 1)
    with pytest.raises(ex.EvaluationError, match="more than"):
        run("format('{0}{0}{0}', params.v)", params_v=big)
    with pytest.raises(ex.EvaluationError, match="more than"):
        run("join(fromJSON(params.v), params.sep)", params_v='["a","b","c"]', params_sep=big)


def test_nested_calls_count_toward_the_nesting_limit() -> None:
    deep = "toJSON(" * (ex.MAX_NESTING + 1) + "1" + ")" * (ex.MAX_NESTING + 1)
    with pytest.raises(ex.ExpressionError, match="levels deep"):
        ex.parse(deep)


def test_json_nested_past_pythons_stack_is_an_evaluation_error_not_a_crash() -> None:
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(ex.EvaluationError, match="nested too deeply"):
        run("fromJSON(params.v)", params_v=deep)
    assert run("contains(params.v, 'x')", params_v=deep) is False
    assert run("join(params.v)", params_v=deep) == deep
