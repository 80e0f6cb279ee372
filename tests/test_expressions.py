"""The ``${{ }}`` expression language: finding, parsing, references, evaluation, limits."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_celery.definition import expressions as ex
from runbook_celery.definition.expressions import (
    MAX_NESTING,
    MAX_TOKENS,
    BinOp,
    Call,
    ExpressionError,
    Literal,
    Not,
    Ref,
)

pytestmark = pytest.mark.timeout(20)


def error(source: str) -> str:
    """The message parsing ``source`` as an expression body fails with."""
    with pytest.raises(ExpressionError) as info:
        ex.parse(source)
    return str(info.value)


def find_error(text: str) -> str:
    with pytest.raises(ExpressionError) as info:
        ex.find(text)
    return str(info.value)


# ---------------------------------------------------------------- finding ${{ }} in text


def test_text_without_expressions_has_none():
    assert ex.find("echo $HOME ${PATH} {{ not ours }} $ {") == []


def test_find_returns_spans_sources_and_parsed_bodies():
    text = "echo ${{ params.who }} and ${{steps.build.outputs.tag}}!"
    first, second = ex.find(text)
    assert text[first.start : first.end] == "${{ params.who }}"
    assert first.source == "params.who"
    assert first.node == Ref("params", "who")
    assert text[second.start : second.end] == "${{steps.build.outputs.tag}}"
    assert second.node == Ref("outputs", "build", "tag")


def test_closing_braces_inside_a_string_literal_do_not_end_the_expression():
    (occ,) = ex.find("x ${{ 'a}}b' == params.p }} y")
    assert occ.node == BinOp("==", Literal("a}}b"), Ref("params", "p"))
    assert occ.source == "'a}}b' == params.p"


def test_a_doubled_quote_is_a_quote_inside_a_string():
    (occ,) = ex.find("${{ 'it''s' }}")
    assert occ.node == Literal("it's")


def test_an_unterminated_expression_is_reported_with_its_start():
    message = find_error("echo ok\necho ${{ params.name\necho more")
    assert message == "unterminated expression '${{ params.name' (missing '}}')"


def test_an_unterminated_string_inside_an_expression_is_reported():
    message = find_error("echo ${{ 'abc }} tail")
    assert message.startswith('unterminated string in expression "${{ \'abc }} tail"')


def test_a_bad_expression_later_in_the_text_is_still_found():
    with pytest.raises(ExpressionError, match="unknown function nope"):
        ex.find("${{ params.a }} then ${{ nope() }}")


# ---------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("source", "node"),
    [
        ("params.region", Ref("params", "region")),
        ("steps.build.outputs.image", Ref("outputs", "build", "image")),
        ("steps.build-linux.outputs.image-tag", Ref("outputs", "build-linux", "image-tag")),
        ("steps.build.outputs", Ref("all_outputs", "build")),
        ("matrix.os", Ref("matrix", "os")),
        ("item", Ref("item")),
        ("'text'", Literal("text")),
        ("''", Literal("")),
        ("42", Literal(42)),
        ("-3", Literal(-3)),
        ("2.5", Literal(2.5)),
        ("true", Literal(True)),
        ("false", Literal(False)),
        ("success()", Call("success")),
        ("failure( )", Call("failure")),
        ("always()", Call("always")),
        ("cancelled()", Call("cancelled")),
        ("  params.x  ", Ref("params", "x")),
    ],
)
def test_atoms(source, node):
    assert ex.parse(source) == node


def test_and_binds_tighter_than_or():
    a, b, c = Ref("params", "a"), Ref("params", "b"), Ref("params", "c")
    assert ex.parse("params.a || params.b && params.c") == BinOp("||", a, BinOp("&&", b, c))
    assert ex.parse("(params.a || params.b) && params.c") == BinOp("&&", BinOp("||", a, b), c)


def test_not_binds_tighter_than_comparison_operands_and_chains():
    assert ex.parse("!success() && always()") == BinOp("&&", Not(Call("success")), Call("always"))
    assert ex.parse("!!true") == Not(Not(Literal(True)))


def test_comparisons():
    assert ex.parse("params.env == 'prod'") == BinOp("==", Ref("params", "env"), Literal("prod"))
    assert ex.parse("params.n != 3") == BinOp("!=", Ref("params", "n"), Literal(3))


def test_operators_chain_to_the_left():
    assert ex.parse("true || false || true") == BinOp(
        "||", BinOp("||", Literal(True), Literal(False)), Literal(True)
    )


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("foo()", "unknown function foo() in expression 'foo()'; known: success(), failure()"),
        ("hashFiles(params.x)", "unknown function hashFiles()"),
        ("env.HOME", "unknown name 'env' in expression 'env.HOME'"),
        ("github.sha", "unknown name 'github'"),
        ("params.", "expected name, got end of expression in expression 'params.'"),
        ("params", "expected '.', got end of expression"),
        ("steps.a.output.x", "expected 'outputs', got 'output'"),
        ("steps.a", "expected '.', got end of expression"),
        ("params.a == params.b == params.c", "unexpected '=='"),
        ("params.a params.b", "unexpected 'params'"),
        ("(params.a", "expected ')', got end of expression"),
        ("params.a)", "unexpected ')'"),
        ("params.a &&", "ends too early"),
        ("$x", "cannot parse '$x'"),
        ("params.a = 'x'", "cannot parse"),
        ("success", "expected '(', got end of expression"),
    ],
)
def test_malformed_expressions_say_what_is_wrong(source, fragment):
    assert fragment in error(source)


# ---------------------------------------------------------------- limits on hostile input


def test_nesting_up_to_the_limit_parses():
    depth = MAX_NESTING
    assert ex.parse("(" * depth + "true" + ")" * depth) == Literal(True)
    node = ex.parse("!" * depth + "true")
    for _ in range(depth):
        assert isinstance(node, Not)
        node = node.operand
    assert node == Literal(True)


@pytest.mark.parametrize(
    "source",
    [
        "(" * (MAX_NESTING + 1) + "true" + ")" * (MAX_NESTING + 1),
        "!" * (MAX_NESTING + 1) + "true",
        "!(" * 20 + "true" + ")" * 20,
    ],
    ids=["parentheses", "nots", "mixed"],
)
def test_nesting_past_the_limit_is_an_expression_error(source):
    assert f"more than {MAX_NESTING} levels deep" in error(source)


def test_more_tokens_than_the_limit_is_an_expression_error():
    terms = (MAX_TOKENS + 1) // 2 + 1
    assert f"more than {MAX_TOKENS} tokens" in error(" || ".join(["true"] * terms))


@pytest.mark.parametrize(
    "source",
    [
        "!" * 100_000 + "true",
        "(" * 100_000 + "true" + ")" * 100_000,
        " && ".join(["params.a"] * 100_000),
        "'" + "x" * 1_000_000,
    ],
    ids=["nots", "parentheses", "long-chain", "unterminated-string"],
)
def test_hostile_expressions_fail_fast_with_an_expression_error(source):
    # no RecursionError (which would escape the CLI as a traceback) and no quadratic scan
    started = time.perf_counter()
    with pytest.raises(ExpressionError):
        ex.find("${{ " + source + " }}")
    assert time.perf_counter() - started < 0.5


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet="${}()!&|=' .abcps0\n", max_size=60))
def test_finding_expressions_in_any_text_either_works_or_says_why(text):
    try:
        occurrences = ex.find(text)
    except ExpressionError as exc:
        assert str(exc)
    else:
        for occ in occurrences:
            assert text[occ.start : occ.start + 3] == "${{"
            assert text[occ.end - 2 : occ.end] == "}}"


# ---------------------------------------------------------------- references and functions


def test_refs_lists_every_reference_in_order():
    node = ex.parse("params.a == steps.b.outputs.c && (matrix.os != 'x' || !item)")
    assert [r.text() for r in ex.refs(node)] == [
        "params.a",
        "steps.b.outputs.c",
        "matrix.os",
        "item",
    ]


def test_ref_text_round_trips():
    for source in ("params.a", "steps.b.outputs.c", "steps.b.outputs", "matrix.os", "item"):
        (ref,) = ex.refs(ex.parse(source))
        assert ref.text() == source


def test_calls_lists_status_functions():
    assert ex.calls(ex.parse("failure() || (always() && !cancelled())")) == {
        "failure",
        "always",
        "cancelled",
    }
    assert ex.calls(ex.parse("params.a == 'x'")) == set()


# ---------------------------------------------------------------- evaluation


def resolver(values: dict[str, object]):  # type: ignore[no-untyped-def]
    return lambda ref: values[ref.text()]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("params.env == 'prod'", True),
        ("params.env != 'prod'", False),
        ("params.n == '3'", True),  # values compare as the text they become
        ("params.n == 3", True),
        ("params.flag == 'true'", True),
        ("params.flag && params.empty", False),
        ("params.flag || params.empty", True),
        ("!params.zero", True),
        ("!params.false_text", True),
        ("steps.a.outputs.tag == 'v1'", True),
    ],
)
def test_evaluate(source, expected):
    values = {
        "params.env": "prod",
        "params.n": 3,
        "params.flag": True,
        "params.empty": "",
        "params.zero": "0",
        "params.false_text": "false",
        "steps.a.outputs.tag": "v1",
    }
    assert ex.evaluate(ex.parse(source), resolver(values)) is expected


def test_status_functions_read_the_status_mapping():
    node = ex.parse("failure() || always()")
    assert ex.evaluate(node, resolver({}), {"failure": False, "always": True}) is True
    assert ex.evaluate(node, resolver({}), {}) is False
    assert ex.evaluate(ex.parse("success()"), resolver({})) is False


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (2.5, "2.5"),
        ("as is", "as is"),
        ([1, "a"], '[1,"a"]'),
        ({"k": "v"}, '{"k":"v"}'),
    ],
)
def test_to_text(value, text):
    assert ex.to_text(value) == text


@pytest.mark.parametrize(
    ("value", "truth"),
    [("", False), ("false", False), ("0", False), ("no", True), ("x", True), (0, False), (1, True)],
)
def test_truthy(value, truth):
    assert ex.truthy(value) is truth


# ---------------------------------------------------------------- if: conditions


def test_a_condition_may_be_bare_or_wrapped():
    assert ex.parse_condition("failure()") == Call("failure")
    assert ex.parse_condition("  ${{ failure() }}  ") == Call("failure")


def test_a_wrapped_condition_must_be_one_expression_and_nothing_else():
    for text in ("${{ success() }} && ${{ always() }}", "${{ success() }} extra"):
        with pytest.raises(ExpressionError, match="single expression"):
            ex.parse_condition(text)
