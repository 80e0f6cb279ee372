"""The DAG and its compilation: order, cycles, series-parallel shape, plans, safe commands."""

from __future__ import annotations

import json
import os
from itertools import pairwise, permutations
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_celery.core.errors import InvalidParams
from runbook_celery.definition import expressions as ex
from runbook_celery.definition.bashplace import Unplaceable
from runbook_celery.definition.graph import Graph, Leaf, Parallel, Series, find_cycle
from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.engine.runner import run_bash
from runbook_celery.plan.bashtext import rewrite_command
from runbook_celery.plan.compile import (
    CANVAS,
    DYNAMIC,
    build_snapshot,
    make_plan,
    resolve_params,
    snapshot_sha256,
)

pytestmark = pytest.mark.timeout(30)

CHAIN = {"a": [], "b": ["a"], "c": ["b"]}
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
FAN_OUT = {"a": [], "b": ["a"], "c": ["a"], "d": ["a"]}
FAN_IN = {"a": [], "b": [], "c": [], "d": ["a", "b", "c"]}
N_SHAPE = {"a": [], "b": [], "c": ["a"], "d": ["a", "b"]}


# ---------------------------------------------------------------- graph relations


def test_topological_order_puts_needs_first_and_keeps_definition_order_for_ties():
    graph = Graph({"z": [], "late": ["y"], "y": [], "a": ["z"]})
    assert graph.topological() == ["z", "y", "late", "a"]


def test_ancestors_descendants_and_sources():
    graph = Graph(DIAMOND)
    assert graph.ancestors("d") == {"a", "b", "c"}
    assert graph.ancestors("a") == frozenset()
    assert graph.descendants("a") == {"b", "c", "d"}
    assert graph.descendants("d") == set()
    assert graph.sources() == ["a"]
    assert graph.precedes("a", "d")
    assert not graph.precedes("b", "c")
    assert not graph.precedes("d", "a")


def test_ancestors_are_transitive():
    graph = Graph({f"s{i}": [f"s{i - 1}"] if i else [] for i in range(30)})
    assert graph.ancestors("s29") == {f"s{i}" for i in range(29)}


def test_an_acyclic_graph_has_no_cycle():
    assert find_cycle(DIAMOND) is None


def test_a_cycle_names_every_step_in_it_and_closes_on_its_first():
    cycle = find_cycle({"start": [], "a": ["start", "c"], "b": ["a"], "c": ["b"]})
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert len(cycle) == 4
    # each step needs the next one
    needs = {"a": ["start", "c"], "b": ["a"], "c": ["b"]}
    for step, needed in pairwise(cycle):
        assert needed in needs[step]


def test_a_long_cycle_is_found_whole():
    needs = {f"s{i}": [f"s{(i + 1) % 50}"] for i in range(50)}
    cycle = find_cycle(needs)
    assert cycle is not None
    assert len(cycle) == 51
    assert set(cycle) == set(needs)


def test_unknown_needs_are_ignored_when_looking_for_cycles():
    assert find_cycle({"a": ["ghost"]}) is None


# ---------------------------------------------------------------- series-parallel shape


def test_a_single_step_is_a_leaf():
    assert Graph({"only": []}).series_parallel() == Leaf("only")


def test_a_chain_is_one_series():
    assert Graph(CHAIN).series_parallel() == Series((Leaf("a"), Leaf("b"), Leaf("c")))


def test_a_diamond_is_a_series_around_a_parallel_middle():
    assert Graph(DIAMOND).series_parallel() == Series(
        (Leaf("a"), Parallel((Leaf("b"), Leaf("c"))), Leaf("d"))
    )


def test_a_fan_out_is_a_step_then_a_parallel_group():
    assert Graph(FAN_OUT).series_parallel() == Series(
        (Leaf("a"), Parallel((Leaf("b"), Leaf("c"), Leaf("d"))))
    )


def test_a_fan_in_is_a_parallel_group_then_a_step():
    assert Graph(FAN_IN).series_parallel() == Series(
        (Parallel((Leaf("a"), Leaf("b"), Leaf("c"))), Leaf("d"))
    )


def test_independent_chains_run_in_parallel():
    graph = Graph({"a1": [], "a2": ["a1"], "b1": [], "b2": ["b1"]})
    assert graph.series_parallel() == Parallel(
        (Series((Leaf("a1"), Leaf("a2"))), Series((Leaf("b1"), Leaf("b2"))))
    )


def test_the_n_shape_has_no_series_parallel_decomposition():
    assert Graph(N_SHAPE).series_parallel() is None


def test_an_n_hidden_inside_a_bigger_dag_is_still_found():
    graph = Graph(
        {"start": [], **{k: v or ["start"] for k, v in N_SHAPE.items()}, "end": ["c", "d"]}
    )
    assert graph.series_parallel() is None


def test_transitive_edges_do_not_change_the_shape():
    with_shortcut = Graph({"a": [], "b": ["a"], "c": ["a", "b"]})
    assert with_shortcut.series_parallel() == Graph(CHAIN).series_parallel()


def _tree_order(tree) -> tuple[list[str], set[tuple[str, str]]]:  # type: ignore[no-untyped-def]
    """Leaves of an SP tree and the pairs (u, v) the tree runs u before v."""
    if isinstance(tree, Leaf):
        return [tree.step], set()
    parts = [_tree_order(p) for p in tree.parts]
    leaves = [leaf for part in parts for leaf in part[0]]
    before = set().union(*(part[1] for part in parts))
    if isinstance(tree, Series):
        for i, (earlier, _) in enumerate(parts):
            for later, _ in parts[i + 1 :]:
                before |= {(u, v) for u in earlier for v in later}
    return leaves, before


def _has_induced_n(graph: Graph, steps: list[str]) -> bool:
    lt = graph.precedes

    def unrelated(u: str, v: str) -> bool:
        return not lt(u, v) and not lt(v, u)

    return any(
        lt(a, c)
        and lt(a, d)
        and lt(b, d)
        and unrelated(a, b)
        and unrelated(b, c)
        and unrelated(c, d)
        for a, b, c, d in permutations(steps, 4)
    )


@st.composite
def dags(draw):  # type: ignore[no-untyped-def]
    size = draw(st.integers(1, 7))
    steps = [f"s{i}" for i in range(size)]
    return {
        s: draw(st.lists(st.sampled_from(steps[:i]), unique=True)) if i else []
        for i, s in enumerate(steps)
    }


@settings(max_examples=200, deadline=None, database=None)
@given(dags())
def test_the_sp_tree_mirrors_the_dag_order_exactly_or_there_is_an_n(needs):
    # Given any small DAG
    graph = Graph(needs)
    steps = list(needs)
    tree = graph.series_parallel()
    if tree is None:
        # Then no canvas exists only because the order contains an N
        assert _has_induced_n(graph, steps)
        return
    # Then every step appears once and the tree runs u before v exactly when the DAG does
    leaves, before = _tree_order(tree)
    assert sorted(leaves) == sorted(steps)
    assert before == {(u, v) for u in steps for v in steps if graph.precedes(u, v)}


# ---------------------------------------------------------------- plans


def test_a_canvas_plan_renders_the_chain_and_group_tree():
    plan = make_plan(Graph(DIAMOND))
    assert plan.mode == CANVAS
    assert plan.render() == (
        "canvas (exact mirror of the DAG):\n"
        "  chain(\n"
        "    a,\n"
        "    group(\n"
        "      b,\n"
        "      c\n"
        "    ),\n"
        "    d\n"
        "  )"
    )


def test_a_single_step_plan_is_just_that_step():
    assert make_plan(Graph({"only": []})).render() == "canvas (exact mirror of the DAG):\n  only"


def test_an_n_shaped_plan_is_dynamic_and_explains_why():
    plan = make_plan(Graph(N_SHAPE))
    assert plan.mode == DYNAMIC
    assert plan.witness == ("a", "b", "c", "d")
    lines = plan.render().splitlines()
    assert lines[0].startswith("dynamic dispatch (the DAG is not series-parallel")
    assert lines[1].strip().startswith("N-shape: c needs a; d needs a and b; b and c are unrelated")
    assert [line.strip() for line in lines[-4:]] == [
        "a at start",
        "b at start",
        "c after a",
        "d after a, b",
    ]


# ---------------------------------------------------------------- expressions become env vars


def test_a_command_without_expressions_is_left_alone():
    vars_: dict[str, str] = {}
    assert rewrite_command("echo 'hi' \"$HOME\"", vars_) == "echo 'hi' \"$HOME\""
    assert vars_ == {}


def test_each_reference_becomes_a_quoted_environment_variable():
    vars_: dict[str, str] = {}
    text = rewrite_command(
        "deploy ${{ params.region }} ${{ steps.build.outputs.image }} ${{ steps.build.outputs }}",
        vars_,
    )
    assert text == (
        'deploy "${RUNBOOK_PARAM_region}" "${RUNBOOK_OUT_build__image}" "${RUNBOOK_OUTS_build}"'
    )
    assert vars_ == {
        "RUNBOOK_PARAM_region": "params.region",
        "RUNBOOK_OUT_build__image": "steps.build.outputs.image",
        "RUNBOOK_OUTS_build": "steps.build.outputs",
    }


def test_the_same_reference_twice_uses_one_variable():
    vars_: dict[str, str] = {}
    text = rewrite_command("echo ${{ params.a }} ${{params.a}}", vars_)
    assert text == 'echo "${RUNBOOK_PARAM_a}" "${RUNBOOK_PARAM_a}"'
    assert vars_ == {"RUNBOOK_PARAM_a": "params.a"}


def test_references_whose_names_clash_once_sanitised_get_distinct_variables():
    vars_: dict[str, str] = {}
    rewrite_command("x ${{ steps.a-b.outputs.k }} ${{ steps.a_b.outputs.k }}", vars_)
    assert vars_ == {
        "RUNBOOK_OUT_a_b__k": "steps.a-b.outputs.k",
        "RUNBOOK_OUT_a_b__k_2": "steps.a_b.outputs.k",
    }


@pytest.mark.parametrize("expr", ["params.a == 'x'", "'literal'", "!params.a", "toJSON(params.a)"])
def test_a_computed_expression_in_a_command_becomes_a_variable_holding_its_value(expr):
    vars_: dict[str, str] = {}
    assert rewrite_command(f"echo ${{{{ {expr} }}}}", vars_) == 'echo "${RUNBOOK_EXPR}"'
    assert vars_ == {"RUNBOOK_EXPR": expr}


def test_status_functions_are_refused_in_a_command():
    with pytest.raises(ex.ExpressionError, match="status functions belong in 'if:'"):
        rewrite_command("echo ${{ success() }}", {})


HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "'; touch PWNED; '",
    '"; touch PWNED; "',
    "x\ntouch PWNED\n",
    "$HOME ${PATH} $((1+1)) *",
    "a  b\t\tc  ",
    "\\n \\ '\"",
    "-n",
    "",
]

# (template, how the value shows up in $OUT): a printf of the argument into $OUT
CONTEXTS = {
    "unquoted": ("printf '%s' ${{ params.x }} > \"$OUT\"", "{}"),
    "double-quoted": ('printf \'%s\' "<${{ params.x }}>" > "$OUT"', "<{}>"),
    "assignment": ('v=${{ params.x }}; printf "%s" "$v" > "$OUT"', "{}"),
    "after-quoted-apostrophe": (
        'echo "it\'s" >/dev/null; printf \'%s\' ${{ params.x }} > "$OUT"',
        "{}",
    ),
}


def run_rewritten(template: str, value: str, cwd: Path) -> str:
    """Rewrite ``template``, run it with ``value`` in the environment, return what $OUT got."""
    vars_: dict[str, str] = {}
    command = rewrite_command(template, vars_)
    assert value == "" or value not in command  # the value is never in the shell text
    out = cwd / "out"
    env = {"PATH": os.environ["PATH"], "OUT": str(out), **dict.fromkeys(vars_, value)}
    result = run_bash(command, env, cwd=str(cwd), timeout=10)
    assert result.ok, (result.exit_code, result.stderr_tail)
    return out.read_text()


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("context", list(CONTEXTS))
def test_hostile_values_arrive_verbatim_and_nothing_executes(tmp_path, context, value):
    template, shown = CONTEXTS[context]
    got = run_rewritten(template, value, tmp_path)
    assert got == shown.format(value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no PWNED


MORE_CONTEXTS = {
    # each was a bug of the hand-written quote tracker this replaced (it had no Bash grammar)
    "apostrophe-in-comment": ("# don't panic\nprintf '%s' ${{ params.x }} > \"$OUT\"", "{}"),
    "unquoted-heredoc": ('cat > "$OUT" <<EOF\n${{ params.x }}\nEOF', "{}\n"),
    "quotes-nested-in-command-substitution": (
        'printf \'%s\' "$(printf \'%s\' "${{ params.x }}")" > "$OUT"',
        "{}",
    ),
}


@pytest.mark.parametrize("context", list(MORE_CONTEXTS))
def test_values_arrive_verbatim_in_more_bash_contexts(tmp_path, context):
    template, shown = MORE_CONTEXTS[context]
    value = "a  b $(touch PWNED) '\" *"
    got = run_rewritten(template, value, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # never executes, even so
    assert got == shown.format(value)


# Single quotes and $'...' expand nothing: the old rewrite closed and reopened the quotes
# around the reference, which is only right when the quoted text is data. Since the same
# text may be code for another program (python3 -c '...'), these places are refused now.
REFUSED_QUOTES = {
    "single-quoted": ("printf '%s' '<${{ params.x }}>'", "inside single quotes"),
    "ansi-c-quoted": ("printf '%s' $'<${{ params.x }}>'", "inside $'...'"),
}


@pytest.mark.parametrize("context", list(REFUSED_QUOTES))
def test_values_inside_single_quotes_are_refused_with_a_fix(context):
    template, reason = REFUSED_QUOTES[context]
    with pytest.raises(Unplaceable) as info:
        rewrite_command(template, {})
    assert reason in str(info.value)
    assert 'use double quotes ("...${{ params.x }}...")' in str(info.value)


# ---------------------------------------------------------------- snapshot


WORKFLOW = """\
name: demo
params:
  who: world
  count: 3
env:
  GREETING: hello ${{ params.who }}
steps:
  - id: build
    run: echo ${{ params.who }}
  - id: left
    needs: build
    run: echo "${{ steps.build.outputs.tag }}"
  - id: right
    needs: [build]
    run: echo right
  - id: end
    needs: [left, right]
    run: echo end
"""


def test_a_snapshot_freezes_params_and_commands_without_values_in_shell_text():
    loaded = load_workflow_text(WORKFLOW, file="demo.yaml")
    snapshot = build_snapshot(loaded, {"who": "$(touch PWNED)"})
    assert snapshot["workflow"] == "demo"
    assert snapshot["params"] == {"who": "$(touch PWNED)", "count": "3"}
    assert snapshot["env"] == {"GREETING": "hello $(touch PWNED)"}  # env values are data
    build, left = snapshot["steps"][0], snapshot["steps"][1]
    assert build["command"] == 'echo "${RUNBOOK_PARAM_who}"'
    assert build["vars"] == {"RUNBOOK_PARAM_who": "params.who"}
    assert left["command"] == 'echo "${RUNBOOK_OUT_build__tag}"'
    assert left["needs"] == ["build"]
    assert snapshot["order"] == ["build", "left", "right", "end"]
    assert snapshot["mode"] == CANVAS
    assert all("PWNED" not in s["command"] for s in snapshot["steps"])


def test_a_snapshot_is_json_and_hashes_the_same_every_time():
    loaded = load_workflow_text(WORKFLOW, file="demo.yaml")
    first, second = build_snapshot(loaded), build_snapshot(loaded)
    assert json.loads(json.dumps(first)) == first
    assert snapshot_sha256(first) == snapshot_sha256(second)
    assert snapshot_sha256(first) != snapshot_sha256(build_snapshot(loaded, {"who": "you"}))


def test_an_n_shaped_workflow_snapshots_as_dynamic():
    text = "name: n\nsteps:\n" + "".join(
        f"  - id: {s}\n    needs: {needs}\n    run: echo {s}\n" for s, needs in N_SHAPE.items()
    )
    assert build_snapshot(load_workflow_text(text))["mode"] == DYNAMIC


def test_trigger_params_override_defaults_as_text():
    assert resolve_params({"a": 1, "b": "x", "c": True}, {"a": 2.5, "c": False}) == {
        "a": "2.5",
        "b": "x",
        "c": "false",
    }


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ({"nope": "1"}, "unknown param 'nope' (this workflow declares: a)"),
        ({"a": ["list"]}, "param 'a' must be a string, number or boolean"),
        ({"a": None}, "param 'a' must be a string, number or boolean"),
        ({"a": "nul\x00byte"}, "param 'a' contains a NUL byte"),
    ],
)
def test_bad_trigger_params_are_refused(given, fragment):
    with pytest.raises(InvalidParams) as info:
        resolve_params({"a": "default"}, given)
    assert fragment in str(info.value)
