"""Values never become code: a corpus of Bash contexts x hostile values.

Every context we accept is compiled with ``bashtext.rewrite_command`` and run through
runbook's own ``runner.run_bash`` with the value in the environment, as a worker runs a
step: the value must arrive byte for byte and nothing in it may run (``touch PWNED`` would
leave a file in the step's directory). Every context we refuse must be refused when the
workflow is validated, at the line of the ``${{`` in the YAML file, with a fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import PREFIX, run_cli

from runbook_celery.core.errors import InvalidDefinition
from runbook_celery.definition import bashcommands as bc
from runbook_celery.definition import bashplace
from runbook_celery.definition.bashclassify import Quoting
from runbook_celery.definition.bashplace import Unplaceable
from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.engine.runner import run_bash
from runbook_celery.plan.bashtext import rewrite_command
from runbook_celery.plan.compile import build_snapshot

pytestmark = pytest.mark.timeout(60)

HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "a[$(touch PWNED)]",
    "x[`touch PWNED`]",
    "'; touch PWNED; '",
    '"; touch PWNED; "',
    "x; touch PWNED",
    "x && touch PWNED",
    "x\ntouch PWNED\n",
    "EOF\ntouch PWNED\nEOF",
    "*",
    "a  b\t\tc  ",
    " leading and trailing ",
    "-n",
    "--rf",
    "-e \\n",
    "$'\\n'",
    "",
    "héllo wörld ✓ 日本語",
    "\\",
    "\\$(touch PWNED)",
    "${PATH} $HOME $((1+1))",
    "#not a comment",
    "~root {a,b} !! %s%n",
    "}}",
]

# name: (template, expected $OUT for value v as a format with {v}); EXPECTED holds the value
ACCEPTED: dict[str, tuple[str, str]] = {
    "unquoted word": ("printf '%s' ${{ params.x }} > \"$OUT\"", "{v}"),
    "part of a word": ("printf '%s' pre${{ params.x }}post > \"$OUT\"", "pre{v}post"),
    "double-quoted": ('printf \'%s\' "<${{ params.x }}>" > "$OUT"', "<{v}>"),
    "two in one string": (
        'printf \'%s\' "${{ params.x }}|${{ params.x }}" > "$OUT"',
        "{v}|{v}",
    ),
    "assignment": ('v=${{ params.x }}; printf \'%s\' "$v" > "$OUT"', "{v}"),
    "assignment in quotes": ('v="${{ params.x }}"; printf \'%s\' "$v" > "$OUT"', "{v}"),
    "export": ('export V=${{ params.x }}; printf \'%s\' "$V" > "$OUT"', "{v}"),
    "local in a function": (
        'f() { local v=${{ params.x }}; printf \'%s\' "$v"; }; f > "$OUT"',
        "{v}",
    ),
    "readonly": ('readonly R=${{ params.x }}; printf \'%s\' "$R" > "$OUT"', "{v}"),
    "array element": ('a=(one ${{ params.x }}); printf \'%s\' "${a[1]}" > "$OUT"', "{v}"),
    "associative array value": (
        'declare -A m=([k]=${{ params.x }}); printf \'%s\' "${m[k]}" > "$OUT"',
        "{v}",
    ),
    "prefix assignment": (
        'V=${{ params.x }} bash -c \'printf "%s" "$V"\' > "$OUT"',
        "{v}",
    ),
    "env wrapper assignment": (
        'env V=${{ params.x }} bash -c \'printf "%s" "$V"\' > "$OUT"',
        "{v}",
    ),
    "unquoted heredoc": ('cat > "$OUT" <<EOF\n${{ params.x }}\nEOF', "{v}\n"),
    "heredoc with other variables": (
        'cat > "$OUT" <<EOF\n$EXPECTED|${EXPECTED}|$1|${{ params.x }}|$#|\\\\${{ params.x }}\nEOF',
        "{v}|{v}||{v}|0|\\{v}\n",
    ),
    "heredoc with quotes around": (
        'cat > "$OUT" <<EOF\n\'${{ params.x }}\' "${{ params.x }}"\nEOF',
        "'{v}' \"{v}\"\n",
    ),
    "heredoc <<- with tabs": ('cat > "$OUT" <<-EOF\n\t<${{ params.x }}>\n\tEOF', "<{v}>\n"),
    "heredoc line indented before the value": (
        'cat > "$OUT" <<EOF\n  ${{ params.x }}\n\t${{ params.x }} x\nEOF',
        "  {v}\n\t{v} x\n",
    ),
    "heredoc <<- in a function": (
        'f() {\n\tcat > "$OUT" <<-EOF\n\t\t${{ params.x }}\n\tEOF\n}\nf',
        "{v}\n",
    ),
    "heredoc piped to a filter": ('cat <<EOF | tr Q Q > "$OUT"\n${{ params.x }}\nEOF', "{v}\n"),
    "heredoc in command substitution": (
        'v="$(cat <<EOF\n<${{ params.x }}>\nEOF\n)"\nprintf \'%s\' "$v" > "$OUT"',
        "<{v}>",
    ),
    "here-string": ('cat <<< ${{ params.x }} > "$OUT"', "{v}\n"),
    "here-string quoted": ('cat <<< "${{ params.x }}" > "$OUT"', "{v}\n"),
    "command substitution": (
        "v=$(printf '<%s>' ${{ params.x }}); printf '%s' \"$v\" > \"$OUT\"",
        "<{v}>",
    ),
    "quotes nested in command substitution": (
        'printf \'%s\' "$(printf \'<%s>\' "${{ params.x }}")" > "$OUT"',
        "<{v}>",
    ),
    "nested command substitutions": (
        "printf '%s' \"$(printf '%s' \"$(printf '<%s>' ${{ params.x }})\")\" > \"$OUT\"",
        "<{v}>",
    ),
    "backticks": ("v=`printf '<%s>' ${{ params.x }}`; printf '%s' \"$v\" > \"$OUT\"", "<{v}>"),
    "backticks in double quotes": (
        "printf '%s' \"`printf '<%s>' ${{ params.x }}`\" > \"$OUT\"",
        "<{v}>",
    ),
    "process substitution": ("cat <(printf '%s' ${{ params.x }}) > \"$OUT\"", "{v}"),
    "case subject": (
        'case ${{ params.x }} in "$EXPECTED") r=yes ;; *) r=no ;; esac; printf %s $r > "$OUT"',
        "yes",
    ),
    "case pattern matches the value": (
        'case "$EXPECTED" in ${{ params.x }}) r=yes ;; *) r=no ;; esac; printf %s $r > "$OUT"',
        "yes",
    ),
    "case pattern is literal": (
        'case zz-other in ${{ params.x }}) r=yes ;; *) r=no ;; esac; printf %s $r > "$OUT"',
        "no",
    ),
    "[[ == ]] right side is literal": (
        '[[ zz-other == ${{ params.x }} ]] && r=yes || r=no; printf %s $r > "$OUT"',
        "no",
    ),
    "[[ == ]] left side": (
        '[[ ${{ params.x }} == "$EXPECTED" ]] && r=yes || r=no; printf %s $r > "$OUT"',
        "yes",
    ),
    "[ = ]": ('[ ${{ params.x }} = "$EXPECTED" ] && r=yes || r=no; printf %s $r > "$OUT"', "yes"),
    "[ -eq ] (test reads numbers, never evaluates)": (
        "if [ ${{ params.x }} -eq 12345 ] 2>/dev/null; then r=yes; else r=no; fi\n"
        'printf %s $r > "$OUT"',
        "no",
    ),
    "for loop word": ('for v in ${{ params.x }}; do printf \'%s\' "$v"; done > "$OUT"', "{v}"),
    "ruff ci.yaml: apostrophe in a comment, then [ = ]": (
        "# Make executable, since artifact download doesn't preserve this\n"
        'if [ "${{ params.x }}" = "$EXPECTED" ]; then r=yes; else r=no; fi; printf %s $r > "$OUT"',
        "yes",
    ),
    "apostrophe in a comment before": (
        "# don't touch this\nprintf '%s' ${{ params.x }} > \"$OUT\"",
        "{v}",
    ),
    "expression in a comment": (
        '# prints ${{ params.x }} as it is, it\'s fine\nprintf \'%s\' "${{ params.x }}" > "$OUT"',
        "{v}",
    ),
    "after $'...' with an escaped quote": (
        "printf '%s' $'it\\'s' >/dev/null; printf '%s' ${{ params.x }} > \"$OUT\"",
        "{v}",
    ),
    "function argument": ('f() { printf \'%s\' "$1"; }; f ${{ params.x }} > "$OUT"', "{v}"),
    "if condition": ("if printf '%s' ${{ params.x }} > \"$OUT\"; then :; fi", "{v}"),
    "while condition": ("while printf '%s' ${{ params.x }} > \"$OUT\"; do break; done", "{v}"),
    "subshell": ("( printf '%s' ${{ params.x }} ) > \"$OUT\"", "{v}"),
    "group": ("{ printf '%s' ${{ params.x }}; } > \"$OUT\"", "{v}"),
    "and-list": ("true && printf '%s' ${{ params.x }} > \"$OUT\"", "{v}"),
    "negated": ("! printf '%s' ${{ params.x }} > \"$OUT\" || true", "{v}"),
    "pipeline into a filter": ("printf '%s' ${{ params.x }} | cat > \"$OUT\"", "{v}"),
    "bash -c positional argument": (
        'bash -c \'printf "%s" "$1"\' _ ${{ params.x }} > "$OUT"',
        "{v}",
    ),
    "bash -o -c positional argument": (
        'bash -o pipefail -c \'printf "%s" "$1"\' _ ${{ params.x }} > "$OUT"',
        "{v}",
    ),
    "bash script argument": ('bash ./show.sh ${{ params.x }} > "$OUT"', "{v}"),
    "python -c positional argument": (
        "python3 -c 'import sys; sys.stdout.write(sys.argv[1])' ${{ params.x }} > \"$OUT\"",
        "{v}",
    ),
    "timeout wrapper": ("timeout 10 printf '%s' ${{ params.x }} > \"$OUT\"", "{v}"),
    "time prefix": ("time printf '%s' ${{ params.x }} > \"$OUT\" 2>/dev/null", "{v}"),
    "printf -v with a literal name": (
        "printf -v v '%s' ${{ params.x }}; printf '%s' \"$v\" > \"$OUT\"",
        "{v}",
    ),
    "[[ string test ]]": (
        'if [[ ${{ params.x }} ]]; then r=set; else r=empty; fi; printf %s $r > "$OUT"',
        "{set}",
    ),
    "find -name pattern is data": (
        "find . -maxdepth 0 -name ${{ params.x }} -print > /dev/null; "
        "printf '%s' ${{ params.x }} > \"$OUT\"",
        "{v}",
    ),
    "multi-line script": (
        'set -u\nname=${{ params.x }}\nif [ -n "$name" ]; then\n'
        '  printf \'%s\' "$name"\nelse\n  printf \'%s\' "${{ params.x }}"\nfi > "$OUT"',
        "{v}",
    ),
}

SHOW_SCRIPT = 'printf "%s" "$1"\n'


def run_compiled(template: str, value: str, tmp_path: Path, numeric: frozenset[str] = frozenset()):
    """Compile ``template``, run it as a worker would with ``value``; return (result, $OUT)."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "show.sh").write_text(SHOW_SCRIPT)
    (work / "show.sh").symlink_to(tmp_path / "show.sh")
    out = tmp_path / "out"
    vars_: dict[str, str] = {}
    command = rewrite_command(template, vars_, numeric)
    env = {"PATH": os.environ["PATH"], "OUT": str(out), "EXPECTED": value}
    env.update(dict.fromkeys(vars_, value))
    result = run_bash(command, env, cwd=str(work), timeout=20)
    pwned = sorted(p.name for p in work.iterdir() if p.name != "show.sh")
    assert pwned == [], f"something ran: {pwned}\n{command}"
    return result, out.read_bytes().decode() if out.exists() else None


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("context", list(ACCEPTED))
def test_accepted_contexts_deliver_hostile_values_byte_for_byte(tmp_path, context, value):
    template, shown = ACCEPTED[context]
    result, got = run_compiled(template, value, tmp_path)
    assert result.ok, (result.exit_code, result.stderr_tail)
    assert got == shown.format(v=value, set="set" if value else "empty")


def test_the_value_is_never_part_of_the_shell_text():
    vars_: dict[str, str] = {}
    command = rewrite_command('echo ${{ params.x }} "${{ params.y }}" # ${{ params.z }}', vars_)
    assert command == 'echo "${RUNBOOK_PARAM_x}" "${RUNBOOK_PARAM_y}" # ${{ params.z }}'
    assert vars_ == {"RUNBOOK_PARAM_x": "params.x", "RUNBOOK_PARAM_y": "params.y"}


def test_an_unquoted_heredoc_gets_the_bare_reference():
    vars_: dict[str, str] = {}
    command = rewrite_command("cat <<EOF\nhi ${{ params.x }}\nEOF\n", vars_)
    assert command == "cat <<EOF\nhi ${RUNBOOK_PARAM_x}\nEOF\n"


# ---------------------------------------------------------------- numbers

NUMERIC: dict[str, tuple[str, str]] = {
    "$(( ))": ('printf %s $(( ${{ params.n }} + 1 )) > "$OUT"', "{n1}"),
    "(( ))": ('(( r = ${{ params.n }} * 2 )) || true; printf %s "$r" > "$OUT"', "{n2}"),
    "let": ('let "r = ${{ params.n }} + 1"; printf %s "$r" > "$OUT"', "{n1}"),
    "[[ -eq ]]": (
        '[[ ${{ params.n }} -eq "$EXPECTED" ]] && r=yes || r=no; printf %s $r > "$OUT"',
        "yes",
    ),
    "array subscript": ('a[${{ params.n }} + 5]=z; printf %s "${a[@]}" > "$OUT"', "z"),
    "declare -i": ('declare -i r=${{ params.n }}; printf %s "$r" > "$OUT"', "{n}"),
    "ternary": ('printf %s $(( ${{ params.n }} > 0 ? 1 : 2 )) > "$OUT"', "{pos}"),
    "c-style for": (
        "r=; for (( i = ${{ params.n }}; i < ${{ params.n }} + 2; i++ )); do r+=x; done\n"
        'printf %s "$r" > "$OUT"',
        "xx",
    ),
}


@pytest.mark.parametrize("number", ["0", "7", "-3", "42"])
@pytest.mark.parametrize("context", list(NUMERIC))
def test_numbers_may_be_used_in_arithmetic(tmp_path, context, number):
    template, shown = NUMERIC[context]
    result, got = run_compiled(template, number, tmp_path, frozenset({"params.n"}))
    assert result.ok, (result.exit_code, result.stderr_tail)
    n = int(number)
    assert got == shown.format(n=n, n1=n + 1, n2=n * 2, pos=1 if n > 0 else 2)


@pytest.mark.parametrize("context", list(NUMERIC))
def test_arithmetic_on_a_value_not_known_to_be_a_number_is_refused(context):
    template, _ = NUMERIC[context]
    with pytest.raises(Unplaceable, match="arithmetic") as info:
        rewrite_command(template, {})
    assert "type: number" in str(info.value)


# ---------------------------------------------------------------- refused contexts

ENV_FIX = 'put it in the step\'s env: (X: ${{ params.x }}) and write "$X"'
QUOTE_FIX = 'use double quotes ("...${{ params.x }}...")'
NUMBER_FIX = "declare the param with type: number"
CODE_FIX = "have that code read X from its environment"

# name: (script, fragment of the reason, fragment of the fix)
REFUSED: dict[str, tuple[str, str, str]] = {
    "single quotes": ("echo '${{ params.x }}'", "inside single quotes", QUOTE_FIX),
    "the OWNER=$(echo '...' | tr) idiom": (
        "OWNER=\"$(echo '${{ params.x }}' | tr '[:upper:]' '[:lower:]')\"",
        "inside single quotes",
        QUOTE_FIX,
    ),
    "single quotes as code": (
        "python3 -c 'print(\"${{ params.x }}\")'",
        "inside single quotes",
        CODE_FIX,
    ),
    "ansi-c quotes": ("echo $'${{ params.x }}'", "inside $'...'", QUOTE_FIX),
    "quoted heredoc": ("cat <<'EOF'\n${{ params.x }}\nEOF", "quoted heredoc", "<<EOF"),
    "double-quoted heredoc delimiter": (
        'cat <<"EOF"\n${{ params.x }}\nEOF',
        "quoted heredoc",
        "<<EOF",
    ),
    "escaped heredoc delimiter": ("cat <<\\EOF\n${{ params.x }}\nEOF", "quoted heredoc", "<<EOF"),
    "$(( ))": ("echo $(( ${{ params.x }} + 1 ))", "arithmetic", NUMBER_FIX),
    "(( ))": ("(( ${{ params.x }} > 1 ))", "arithmetic", NUMBER_FIX),
    "let": ("let n=${{ params.x }}+1", "arithmetic", NUMBER_FIX),
    "[[ -eq ]]": ('[[ "${{ params.x }}" -eq 1 ]]', "arithmetic", NUMBER_FIX),
    "[[ -lt ]] right": ("[[ 1 -lt ${{ params.x }} ]]", "arithmetic", NUMBER_FIX),
    "arithmetic via $()": ("echo $(( $(echo ${{ params.x }}) ))", "arithmetic", NUMBER_FIX),
    "subscript": ("a[${{ params.x }}]=1", "subscript", NUMBER_FIX),
    "subscript in an expansion": ('echo "${a[${{ params.x }}]}"', "subscript", NUMBER_FIX),
    "offset in an expansion": ('echo "${y:${{ params.x }}}"', "another ${...}", ENV_FIX),
    "array literal subscript": ("a=([${{ params.x }}]=1)", "subscript", NUMBER_FIX),
    "c-style for": ("for ((i=${{ params.x }}; i<3; i++)); do :; done", "arithmetic", NUMBER_FIX),
    "declare -i": ("declare -i n=${{ params.x }}", "-i", NUMBER_FIX),
    "integer variable": ("declare -i n\nn=${{ params.x }}", "integer attribute", NUMBER_FIX),
    "nameref": ("declare -n r=${{ params.x }}", "-n", ENV_FIX),
    "nameref variable": ("declare -n r\nr=${{ params.x }}", "nameref", ENV_FIX),
    "default of another expansion": ('echo "${y:-${{ params.x }}}"', "another ${...}", ENV_FIX),
    "eval": ('eval "echo ${{ params.x }}"', "eval runs", CODE_FIX),
    "bash -c code": ('bash -c "echo ${{ params.x }}"', "bash takes this argument as", CODE_FIX),
    "sh -ec code": ("sh -ec ${{ params.x }}", "sh takes this argument as code", CODE_FIX),
    "bash script name": ("bash ${{ params.x }}", "the script to run", ENV_FIX),
    "bash -c code from $()": (
        'bash -c "$(echo ${{ params.x }})"',
        "bash takes this argument as code",
        CODE_FIX,
    ),
    "sudo bash -c": ('sudo -u app bash -c "${{ params.x }}"', "bash takes this", CODE_FIX),
    "env sh -c": ("env A=1 sh -c ${{ params.x }}", "sh takes this argument as code", CODE_FIX),
    "timeout sh -c": ("timeout 5 sh -c ${{ params.x }}", "sh takes this argument", CODE_FIX),
    "python -c": ('python3 -c "print(${{ params.x }})"', "python3 -c runs", CODE_FIX),
    "python -m": ("python3 -m ${{ params.x }}", "python3 -m runs", CODE_FIX),
    "perl -e": ('perl -e "print ${{ params.x }}"', "perl runs", CODE_FIX),
    "perl file argument": ("perl -ne print ${{ params.x }}", "perl runs", CODE_FIX),
    "node -e": ('node -e "${{ params.x }}"', "node runs", CODE_FIX),
    "awk program": ('awk "{print \\"${{ params.x }}\\"}"', "awk runs", CODE_FIX),
    "awk -v": ("awk -v v=${{ params.x }} '{print v}'", "awk runs", CODE_FIX),
    "ssh command": ("ssh host ${{ params.x }}", "ssh hands", CODE_FIX),
    "ssh host": ("ssh ${{ params.x }} uptime", "ssh hands", CODE_FIX),
    "su -c": ('su -c "${{ params.x }}" app', "su -c runs", CODE_FIX),
    "xargs": ("xargs ${{ params.x }}", "xargs runs", CODE_FIX),
    "source": ("source ${{ params.x }}", "source runs", CODE_FIX),
    "dot": (". ${{ params.x }}", ". runs", CODE_FIX),
    "trap": ("trap ${{ params.x }} EXIT", "trap runs", CODE_FIX),
    "find -exec": ("find . -exec ${{ params.x }} {} +", "find -exec runs", CODE_FIX),
    "heredoc into ssh": ("ssh host <<EOF\n${{ params.x }}\nEOF", "ssh", CODE_FIX),
    "backticks in a heredoc": (
        "cat <<EOF\n`${{ params.x }}`\nEOF",
        "this heredoc also has $(...), `...`",
        "compute those into variables before it",
    ),
    "backticks elsewhere in a heredoc": (
        "cat <<EOF\n`date` ${{ params.x }}\nEOF",
        "this heredoc also has $(...), `...`",
        "compute those into variables before it",
    ),
    "partly quoted heredoc delimiter": (
        "echo start\ncat <<E'O'F\n${{ params.x }}\nEOF\necho done\n",
        "in a quoted heredoc",
        ENV_FIX,
    ),
    "alias expansion": (
        "shopt -s expand_aliases\nalias e=eval\ne ${{ params.x }}",
        "alias expansion",
        ENV_FIX,
    ),
    "command substitution in a heredoc": (
        "cat <<EOF\n$(printf '%s' \"${{ params.x }}\")\nEOF",
        "this heredoc also has $(...)",
        "compute those into variables before it",
    ),
    "indented command substitution in a heredoc": (
        "cat <<EOF\n  $(${{ params.x }})\nEOF",
        "this heredoc also has $(...)",
        ENV_FIX,
    ),
    "arithmetic in a <<- heredoc": (
        "cat <<-EOF\n\t$(( ${{ params.x }} ))\n\tEOF",
        "this heredoc also has",
        ENV_FIX,
    ),
    "value after another substitution in a heredoc": (
        "cat <<EOF\n$(date) ${{ params.x }}\nEOF",
        "this heredoc also has $(...)",
        ENV_FIX,
    ),
    "operator expansion in a heredoc": (
        "cat <<EOF\n${y:-${{ params.x }}}\nEOF",
        "another ${...}",
        ENV_FIX,
    ),
    "process substitution in [ ]": (
        "[ -n source <(bash -c x=${{ params.x }}) ]",
        "inside [ ... ] with parentheses",
        ENV_FIX,
    ),
    "keyword after time": ("time [[ ${{ params.x }} -eq 1 ]]", "reads this line", ENV_FIX),
    "assignment after time": ('time a[echo "${{ params.x }}"]=1', "reads this line", ENV_FIX),
    "split output as a wrapper's command": (
        'env A=1 x=$(echo "${{ params.x }}")',
        "may split into several",
        ENV_FIX,
    ),
    "split output as timeout's duration": (
        "timeout $(echo ${{ params.x }}) true",
        "may split into several",
        ENV_FIX,
    ),
    "escaped in a heredoc": ("cat <<EOF\n\\${{ params.x }}\nEOF", "as a variable", ENV_FIX),
    "declare after !": ("! declare -i n=${{ params.x }}", "declare takes", ENV_FIX),
    "heredoc piped into bash": ("cat <<EOF | bash\n${{ params.x }}\nEOF", "bash runs", CODE_FIX),
    "heredoc into python": ("python3 - <<EOF\n${{ params.x }}\nEOF", "python3 runs", CODE_FIX),
    "heredoc written then run": (
        "cat > s.sh <<EOF && bash s.sh\n${{ params.x }}\nEOF",
        "bash runs",
        CODE_FIX,
    ),
    "here-string into bash": ("bash <<< ${{ params.x }}", "bash runs", CODE_FIX),
    "file into bash": ("bash < ${{ params.x }}", "bash runs", CODE_FIX),
    "pipe into sh": ("echo ${{ params.x }} | sh", "sh runs", CODE_FIX),
    "pipe into sudo bash": ('printf %s "${{ params.x }}" | sudo bash', "it reads", CODE_FIX),
    "pipe into eval": ('echo "${{ params.x }}" | eval "$(cat)"', "eval runs", CODE_FIX),
    "command name": ("${{ params.x }} --version", "cannot be the command", ENV_FIX),
    "command name from $()": ("$(echo ${{ params.x }}) arg", "cannot be the command", ENV_FIX),
    "command name after a wrapper": ("nohup ${{ params.x }}", "cannot be the command", ENV_FIX),
    "non-literal command": ('"$TOOL" ${{ params.x }}', "not a literal word", ENV_FIX),
    "printf -v name": ("printf -v ${{ params.x }} %s y", "printf -v assigns", ENV_FIX),
    "read name": ("read ${{ params.x }}", "read assigns", ENV_FIX),
    "unset": ("unset ${{ params.x }}", "unset evaluates", ENV_FIX),
    "[[ -v ]]": ("[[ -v ${{ params.x }} ]]", "-v evaluates", ENV_FIX),
    "[ -v ]": ("[ -v ${{ params.x }} ]", "-v evaluates", ENV_FIX),
    "test -v": ("test -v ${{ params.x }}", "test -v evaluates", ENV_FIX),
    "local name": ("f() { local ${{ params.x }}=1; }", "variable name", ENV_FIX),
    "export name": ("export ${{ params.x }}", "variable name", ENV_FIX),
    "PS4": ("PS4=${{ params.x }}", "PS4 tells Bash", ENV_FIX),
    "BASH_ENV prefix": ("BASH_ENV=${{ params.x }} bash s.sh", "BASH_ENV tells", ENV_FIX),
    "PATH": ('PATH="${{ params.x }}:$PATH"', "PATH tells", ENV_FIX),
    "env LD_PRELOAD": ("env LD_PRELOAD=${{ params.x }} ls", "LD_PRELOAD tells", ENV_FIX),
    "translated string": ('echo $"${{ params.x }}"', "translation", 'use "..." instead'),
    "backticks with backslashes": (
        'echo "`echo \\"${{ params.x }}\\"`"',
        "backslashes",
        "use $(...) instead",
    ),
    "regex": ("[[ a =~ ^${{ params.x }}$ ]]", "regular expression", ENV_FIX),
    "whole regex": ("[[ a =~ ${{ params.x }} ]]", "regular expression", ENV_FIX),
    "escaped dollar": ("echo \\${{ params.x }}", "does not expand this place", ENV_FIX),
    "syntax error": ("echo ${{ params.x }} (", "cannot read this script near line", ENV_FIX),
    "two heredocs on one line": (
        "cat <<-EOF && cat <<\\E2\n\t${{ params.x }}\n\tEOF\nb\nE2\n"
        'y="$(cat <<EOF\n${{ params.x }} "q"\nEOF\n)"; ${{ params.x }} a',
        "starts two heredocs",
        ENV_FIX,
    ),
    "case fallthrough the parser misreads": (
        "case a in *) echo ${{ params.x }} ;& esac",
        "cannot read this script",
        ENV_FIX,
    ),
}


@pytest.mark.parametrize("context", list(REFUSED))
def test_refused_contexts_say_why_and_what_to_write_instead(context):
    script, reason, fix = REFUSED[context]
    with pytest.raises(Unplaceable) as info:
        rewrite_command(script, {})
    message = str(info.value)
    assert reason in message, message
    assert fix in message, message


@pytest.mark.parametrize("context", list(REFUSED))
def test_refused_contexts_are_definition_errors_at_the_line_of_the_expression(context):
    script, reason, fix = REFUSED[context]
    indented = "".join(f"      {line}\n" for line in script.split("\n"))
    text = (
        "name: t\nparams:\n  x: a\nsteps:\n  - id: s\n    run: |\n"
        "      echo first line\n" + indented
    )
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(text, file="wf.yaml")
    first_line = 8 + script[: script.index("${{")].count("\n")
    rendered = [p.render() for p in info.value.problems]
    assert any(
        r.startswith(f"wf.yaml:{first_line}: steps[0].run: ${{{{ params.x }}}}: ")
        and reason in r
        and fix in r
        for r in rendered
    ), rendered


def test_a_refused_value_fails_trigger_before_any_snapshot(tmp_path):
    loaded = load_workflow_text("name: t\nparams:\n  x: a\nsteps:\n  - id: s\n    run: echo ok\n")
    step = loaded.workflow.steps[0].model_copy(update={"run": "eval ${{ params.x }}"})
    bad = loaded.workflow.model_copy(update={"steps": [step]})
    with pytest.raises(InvalidDefinition) as info:
        build_snapshot(type(loaded)(bad, "wf.yaml", tmp_path, loaded.graph))
    assert "eval runs its arguments as Bash code" in str(info.value)
    assert info.value.problems[0].path == "steps[0].run"


def test_a_plain_scalar_reports_the_line_of_its_key():
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(
            "name: t\nparams:\n  x: a\nsteps:\n  - id: s\n    run: eval ${{ params.x }}\n",
            file="wf.yaml",
        )
    assert info.value.problems[0].render().startswith("wf.yaml:6: steps[0].run: ")


def test_every_refused_value_of_a_script_is_reported():
    sites = bashplace.place(
        "eval ${{ params.a }}; echo ${{ params.b }}; (( ${{ params.c }} ))",
        [
            bashplace.Expr(5, 20, "params.a"),
            bashplace.Expr(27, 42, "params.b"),
            bashplace.Expr(47, 62, "params.c"),
        ],
    )
    assert [s.quoting for s in sites] == [None, Quoting.WORD, None]


# ---------------------------------------------------------------- the command policy


def words(*texts: str | None) -> list[bc.Word]:
    return [bc.Word(t) for t in texts]


@pytest.mark.parametrize(
    ("line", "index", "refused"),
    [
        (("bash", "-c", "code", "_", None), 4, False),
        (("bash", "-c", None), 2, True),
        (("bash", "-x", "-c", "code", None), 4, False),
        (("bash", "-o", "pipefail", "script.sh", None), 4, False),
        (("bash", "-o", None), 2, True),
        (("bash", "--", None), 2, True),
        (("bash", None, "x"), 1, True),
        (("sh", "-ec", None), 2, True),
        (("python3", "-c", "code", None), 3, False),
        (("python3", "-ccode", None), 2, False),
        (("python3", "-W", "ignore", "app.py", None), 4, False),
        (("python3", "-m", "pytest", None), 3, False),
        (("python3", "-m", None), 2, True),
        (("python3", "-u", None), 2, True),
        (("/usr/bin/python3.11", "app.py", None), 2, False),
        (("sudo", "-u", None, "systemctl", "restart", "x"), 2, False),
        (("sudo", None, "x"), 1, True),
        (("sudo", "-s", "x", None), 3, True),
        (("timeout", None, "cmd"), 1, False),
        (("timeout", "5", None), 2, True),
        (("env", "-i", "cmd", None), 3, False),
        (("nice", "-n", "5", "cmd", None), 4, False),
        (("nice", "-5", "cmd", None), 3, False),
        (("time", "-p", "cmd", None), 3, False),
        (("exec", "-a", None, "cmd"), 2, False),
        (("command", None), 1, True),
        (("builtin", "eval", None), 2, True),
        (("docker", "run", "img", None), 3, False),
        (("printf", "%s", None), 2, False),
        (("printf", "-v", None), 2, True),
        (("test", "-v", None), 2, True),
        (("test", None, "-eq", "1"), 1, False),
        (("find", ".", "-name", None), 3, False),
        (("find", ".", "-exec", "rm", None), 4, True),
        ((None, "x"), 1, True),
    ],
)
def test_which_arguments_of_a_command_may_hold_a_value(line, index, refused):
    assert (bc.argument_refusal(words(*line), index, numeric=False) is not None) is refused


def test_let_takes_numbers_only():
    refusal = bc.argument_refusal(words("let", None), 1, numeric=False)
    assert refusal is not None and refusal.arithmetic
    assert bc.argument_refusal(words("let", None), 1, numeric=True) is None


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (("bash",), True),
        (("sudo", "-u", "x", "bash"), True),
        (("docker", "exec", "-i", "c", "sh"), True),
        (("python3.12", "-"), True),
        (("ssh", "host"), True),
        ((None,), True),
        (("cat",), False),
        (("tee", "run.sh"), False),
        (("awk", "{print}"), False),
        (("kubectl", "apply", "-f", "-"), False),
    ],
)
def test_which_commands_run_their_standard_input_as_code(line, code):
    assert (bc.reads_code_from_stdin(words(*line)) is not None) is code


def test_validate_and_trigger_refuse_an_unsafe_place_with_exit_2(write_workflow, redis_client):
    wf = write_workflow(
        "name: t\nparams:\n  v: a\nsteps:\n  - id: s\n    run: |\n      echo start\n"
        '      [[ "${{ params.v }}" -eq 1 ]] && echo one\n'
    )
    runs_before = redis_client.zcard(f"{PREFIX}:runs")
    for command in ("validate", "trigger"):
        res = run_cli(command, str(wf))
        assert res.returncode == 2, res
        assert res.stdout == ""
        assert res.stderr.startswith(f"{wf}:8: steps[0].run: ${{{{ params.v }}}}: [[ ... -eq")
        assert "declare the param with type: number" in res.stderr
    assert redis_client.zcard(f"{PREFIX}:runs") == runs_before


# ---------------------------------------------------------------- compositions

# Contexts nested in each other, around an innermost use of the value: whatever the
# placement accepts in any of these combinations, Bash must not run anything in the value.
WRAPPERS = [
    "{}",
    '"{}"',
    "'{}'",
    "$'{}'",
    "$({})",
    "`{}`",
    '"$({})"',
    "<({})",
    "if true; then {}; fi",
    "while false; do {}; done",
    "{ {}; }",
    "( {} )",
    "! {}",
    "true && {}",
    "case a in a) {} ;; esac",
    "case {} in *) ;; esac",
    "case a in {}) ;; esac",
    "for i in 1; do {}; done",
    "for i in {}; do :; done",
    "f() { {}; }; f",
    "cat <<EOF\n{}\nEOF",
    "cat <<-EOF\n\t{}\n\tEOF",
    "cat <<'EOF'\n{}\nEOF",
    'x="$(cat <<EOF\n{}\nEOF\n)"; echo "$x"',
    "cat <<< {}",
    'x=$({}); echo "$x"',
    "echo {} | cat",
    "echo {} | bash",
    "cat <<EOF | sh\n{}\nEOF",
    "[[ -n {} ]]",
    "[[ {} == a ]]",
    "[[ a == {} ]]",
    "[ -n {} ]",
    "[[ {} -eq 1 ]]",
    "eval {}",
    "bash -c {}",
    "bash -c 'echo \"$1\"' _ {}",
    "source <({})",
    "bash <({})",
    "time {}",
    "command {}",
    "env A=1 {}",
    "timeout 5 {}",
    "xargs {} </dev/null",
    "trap {} EXIT",
    "$(( {} ))",
    "(( {} ))",
    "let {}",
    "a[{}]=1",
    "declare -a arr=({})",
    "declare -i n={}",
    "export E={}",
    "${y:-{}}",
    "printf -v {} x",
    "# {}",
]
INNER = [
    "${{ params.x }}",
    "echo ${{ params.x }}",
    'echo "${{ params.x }}"',
    "x=${{ params.x }}",
    "a${{ params.x }}b",
]
PROBES = ["$(touch PWNED)`touch PWNED`", "a[$(touch PWNED)]", "x;touch PWNED\ntouch PWNED"]


def compositions(inner: str) -> list[str]:
    out = {o.replace("{}", m.replace("{}", inner, 1), 1) for o in WRAPPERS for m in WRAPPERS}
    return sorted(out)


def probe_loop(var: str, command: str) -> str:
    """``command`` run once per probe, each in a subshell with the variable set to the probe
    (Bash places a variable the same way whether it comes from the environment or not)."""
    probes = " ".join(f'"$PROBE{i}"' for i in range(len(PROBES)))
    return (
        f"for __probe in {probes}; do (\n{var}=$__probe\n{command}\n) "
        ">/dev/null 2>&1 </dev/null || true; done"
    )


@pytest.mark.parametrize("inner", INNER)
def test_no_composition_of_contexts_runs_the_value(tmp_path, inner):
    scripts = compositions(inner)
    accepted: list[tuple[str, str]] = []
    for script in scripts:
        vars_: dict[str, str] = {}
        try:
            command = rewrite_command(script, vars_)
        except Unplaceable:
            continue
        if vars_:  # else only in comments: nothing placed
            (var,) = vars_
            accepted.append((script, probe_loop(var, command)))
    # one Bash runs a batch of compiled scripts, each by eval in its own directory
    env = {"PATH": os.environ["PATH"], **{f"PROBE{i}": p for i, p in enumerate(PROBES)}}
    for start in range(0, len(accepted), 100):
        batch = accepted[start : start + 100]
        for n, (_, loop) in enumerate(batch):
            env[f"SCRIPT{n}"] = loop
            (tmp_path / f"w{start + n}").mkdir()
        runner = (
            f"for n in $(seq 0 {len(batch) - 1}); do name=SCRIPT$n; "
            f'( cd "w$(( {start} + n ))" && eval "${{!name}}" ) >/dev/null 2>&1 || true; done'
        )
        result = run_bash(runner, env, cwd=str(tmp_path), timeout=120)
        assert result.ok, result.stderr_tail
    for n, (script, _) in enumerate(accepted):
        assert list((tmp_path / f"w{n}").iterdir()) == [], f"{script!r} ran a probe"
    assert len(scripts) > 2500 and len(accepted) > 300  # both outcomes exercised
