"""What a command does with its arguments, as far as placing a value in one is concerned.

Pure: works on a command's words as literal text (``None`` where a word is not literal).
``bashplace`` asks two questions: may a value be the argument at index ``w`` of this
command line (``argument_refusal``), and does this command run what it reads on standard
input as code (``reads_code_from_stdin``)? The lists below are the whole policy; the
definition reference documents them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Variables whose value Bash itself, or the dynamic loader, takes as code to run or as the
# place to find it. Assigning a value to one lets the value choose the code.
CODE_VARIABLES = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "PS0",
        "PS1",
        "PS2",
        "PS3",
        "PS4",
        "PROMPT_COMMAND",
        "SHELLOPTS",
        "BASHOPTS",
        "PATH",
        "BASH_LOADABLES_PATH",
        "LD_PRELOAD",
        "LD_AUDIT",
        "LD_LIBRARY_PATH",
    }
)

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "posh", "fish"})
_PYTHON = re.compile(r"^(?:python|pypy)[0-9.]*$")

# Commands that take their arguments as code, a command line, a variable name or a file to
# run, and for which we place no value in any argument at all.
_WHOLE_LINE: dict[str, str] = {
    "eval": "eval runs its arguments as Bash code",
    "trap": "trap runs its first argument as Bash code",
    "alias": "an alias is Bash code",
    "source": "source runs the file it is given",
    ".": ". runs the file it is given",
    "bind": "bind -x runs its argument as Bash code",
    "complete": "complete -C runs its argument as a command",
    "compgen": "compgen -C runs its argument as a command",
    "fc": "fc runs the history it edits",
    "enable": "enable -f loads the shared object it names",
    "mapfile": "mapfile takes a variable name and a callback command",
    "readarray": "readarray takes a variable name and a callback command",
    "read": "read assigns to the variable names it is given (a subscript in a name runs)",
    "getopts": "getopts assigns to the variable name it is given",
    "unset": "unset evaluates a subscript in the name it is given",
    "wait": "wait -p assigns to the variable name it is given",
    # read as a plain command (after ! or a wrapper): names, attributes and values unknown
    "declare": "declare takes variable names and attributes (-i evaluates arithmetic)",
    "typeset": "typeset takes variable names and attributes (-i evaluates arithmetic)",
    "local": "local takes variable names and attributes (-i evaluates arithmetic)",
    "export": "export takes variable names (a subscript in a name runs)",
    "readonly": "readonly takes variable names (a subscript in a name runs)",
    "ssh": "ssh hands its arguments to a shell on the remote host",
    "su": "su -c runs its argument as shell code",
    "runuser": "runuser -c runs its argument as shell code",
    "xargs": "xargs runs its arguments as a command line",
    "watch": "watch runs its arguments through sh -c",
    "parallel": "parallel runs its arguments as command lines",
    "script": "script -c runs its argument as shell code",
    "perl": "perl runs -e code, and its <> opens file names ending in | as commands",
    "ruby": "ruby runs -e code",
    "php": "php runs -r code",
    "lua": "lua runs -e code",
    "Rscript": "Rscript runs -e code",
    "node": "node runs -e/-p code",
    "nodejs": "node runs -e/-p code",
    "deno": "deno runs eval code",
    "bun": "bun runs -e code",
    "awk": "awk runs its program argument, and takes VAR=value arguments with escapes",
    "gawk": "awk runs its program argument, and takes VAR=value arguments with escapes",
    "mawk": "awk runs its program argument, and takes VAR=value arguments with escapes",
    "nawk": "awk runs its program argument, and takes VAR=value arguments with escapes",
    "sed": "sed runs its script argument (its e command runs shell code)",
    "osascript": "osascript runs -e code",
    "pwsh": "PowerShell runs -Command code",
    "powershell": "PowerShell runs -Command code",
    "tclsh": "tclsh runs its script",
    "expect": "expect runs -c code",
    "sqlite3": "sqlite3 runs its SQL arguments (and .shell)",
    "psql": "psql runs -c SQL (and \\! shell commands)",
    "mysql": "mysql runs -e SQL (and system commands)",
    "sg": "sg runs its argument as a command line",
    "newgrp": "newgrp starts a shell",
    "at": "at runs what it reads as shell code",
    "batch": "batch runs what it reads as shell code",
    "crontab": "crontab installs what it reads as commands",
    "nsenter": "nsenter runs its arguments as a command",
    "unshare": "unshare runs its arguments as a command",
    "chroot": "chroot runs its arguments as a command",
    "flock": "flock runs its arguments as a command (or -c shell code)",
    "ionice": "ionice runs its arguments as a command",
    "taskset": "taskset runs its arguments as a command",
    "chrt": "chrt runs its arguments as a command",
    "systemd-run": "systemd-run runs its arguments as a command",
    "firejail": "firejail runs its arguments as a command",
    "gosu": "gosu runs its arguments as a command",
    "su-exec": "su-exec runs its arguments as a command",
    "chpst": "chpst runs its arguments as a command",
    "unbuffer": "unbuffer runs its arguments as a command",
    "strace": "strace runs its arguments as a command",
    "ltrace": "ltrace runs its arguments as a command",
    "gdb": "gdb runs -ex commands",
    "valgrind": "valgrind runs its arguments as a command",
}


@dataclass(frozen=True)
class _Interpreter:
    """How an interpreter's command line names its code: the first operand, or a flag."""

    code_is_operand: bool = False  # sh -c CODE: -c is a switch, the code is the first operand
    code_short: str = ""  # python -c CODE / -m MODULE: the flag's argument is what runs
    arg_short: str = ""  # options that take the next word as their argument
    arg_long: frozenset[str] = frozenset()


_SHELL = _Interpreter(
    code_is_operand=True, arg_short="oO", arg_long=frozenset({"--rcfile", "--init-file"})
)
_PYTHON_SPEC = _Interpreter(
    code_short="cm", arg_short="WX", arg_long=frozenset({"--check-hash-based-pycs"})
)


@dataclass(frozen=True)
class _Wrapper:
    """A command that runs another command given after its own options."""

    flags: frozenset[str] = frozenset()
    args: frozenset[str] = frozenset()  # options that take the next word as their argument
    positional: int = 0  # operands before the command (timeout's DURATION)
    assignments: bool = False  # NAME=VALUE words before the command (env, sudo)
    numeric_flags: bool = False  # nice -10


def _set(*items: str) -> frozenset[str]:
    return frozenset(items)


_WRAPPERS: dict[str, _Wrapper] = {
    "time": _Wrapper(flags=_set("-p")),
    "nohup": _Wrapper(),
    "command": _Wrapper(flags=_set("-p", "-v", "-V")),
    "builtin": _Wrapper(),
    "busybox": _Wrapper(),
    "exec": _Wrapper(flags=_set("-c", "-l", "-cl", "-lc"), args=_set("-a")),
    "nice": _Wrapper(args=_set("-n", "--adjustment"), numeric_flags=True),
    "setsid": _Wrapper(flags=_set("-c", "-f", "-w", "--ctty", "--fork", "--wait")),
    "timeout": _Wrapper(
        flags=_set("--preserve-status", "--foreground", "-v", "--verbose"),
        args=_set("-s", "--signal", "-k", "--kill-after"),
        positional=1,
    ),
    "env": _Wrapper(
        flags=_set("-i", "--ignore-environment", "-0", "--null", "-v", "--debug", "-"),
        args=_set("-u", "--unset", "-C", "--chdir"),
        assignments=True,
    ),
    "sudo": _Wrapper(
        flags=_set("-E", "-H", "-n", "-k", "-K", "-P", "-S", "-A", "-B", "-b", "--"),
        args=_set("-u", "-g", "-p", "-D", "-C", "-h", "-r", "-t", "-T", "-U"),
        assignments=True,
    ),
    "doas": _Wrapper(flags=_set("-n"), args=_set("-u", "-C")),
}

# Commands that run what they read on standard input as code (heredocs, here-strings,
# `< file` and pipes into them). Wrappers count by the command they run.
_DATA_FROM_STDIN = frozenset(
    {"read", "mapfile", "readarray", "wait", "getopts", "unset", "xargs", "sed"}
    | {"declare", "typeset", "local", "export", "readonly"}
    | {"awk", "gawk", "mawk", "nawk"}
)
_STDIN_CODE = SHELLS | (frozenset(_WHOLE_LINE) - _DATA_FROM_STDIN) | {"sudo", "doas"}

_FIND_RUNS = frozenset({"-exec", "-execdir", "-ok", "-okdir"})
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_./+-]+")
# Reserved words: after `time` or `!` Bash still reads them as syntax, while tree-sitter-bash
# may read them as the name of a command with arguments.
_KEYWORDS = frozenset(
    {"[[", "]]", "((", "))", "{", "}", "!", "if", "then", "elif", "else", "fi", "case"}
    | {"esac", "for", "select", "while", "until", "do", "done", "in", "function", "coproc"}
)

# Commands of _WHOLE_LINE that take variable names rather than code.
_NAME_TAKERS = frozenset(
    {"read", "mapfile", "readarray", "getopts", "unset", "wait"}
    | {"declare", "typeset", "local", "export", "readonly"}
)


@dataclass(frozen=True)
class Refusal:
    """Why a value may not be an argument; ``code``: the command would run it (or its input)
    as code; ``arithmetic``: the command evaluates it as arithmetic (``let``)."""

    reason: str
    code: bool = False
    arithmetic: bool = False


@dataclass(frozen=True)
class Word:
    """One word of a command line: its literal text (None if it expands), the name if its
    source starts like an assignment ``NAME=`` (for env/sudo), and whether it surely stays
    one word (an unquoted $(...) or $x may split into several)."""

    text: str | None
    assign: str | None = None
    single: bool = True


def _base(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def is_interpreter(name: str) -> bool:
    """A command whose arguments or input may be code (anything we would refuse for)."""
    base = _base(name)
    return base in SHELLS or base in _WHOLE_LINE or bool(_PYTHON.match(base))


def reads_code_from_stdin(words: Sequence[Word]) -> str | None:
    """Why this command may run its standard input as code, or None. Any literal word counts,
    so `sudo -u x bash` and `docker exec -i c sh` are caught; an unknown command name too."""
    if not words or words[0].text is None:
        return "its command name is not a literal word, so what reads the text is unknown"
    for word in words:
        if word.text is None:
            continue
        base = _base(word.text)
        if base in _STDIN_CODE or _PYTHON.match(base):
            return f"{base} runs what it reads on standard input as code"
    return None


def argument_refusal(words: Sequence[Word], w: int, numeric: bool) -> Refusal | None:
    """Why a value may not be word ``w`` of this command line (0 is the command name), or None."""
    i = 0
    while True:
        if w == i:
            return Refusal("a value cannot be the command to run; write the command literally")
        name = words[i].text
        if name is None:
            return Refusal(
                "the command name is not a literal word, so what it does with this "
                "argument is unknown"
            )
        base = _base(name)
        if name in _KEYWORDS:
            return Refusal(
                f"Bash reads {name} here as a keyword, the parser as a command name; "
                "write this command without a prefix (time, env, ...)"
            )
        if base in _WRAPPERS:
            nxt = _after_wrapper(_WRAPPERS[base], base, words, i, w)
            if isinstance(nxt, Refusal):
                return nxt
            if nxt is None or nxt > w:
                return None  # an option argument of the wrapper, or there is no command
            after = words[nxt].text
            if base == "time" and (after is None or not _PLAIN_NAME.fullmatch(after)):
                # `time` is a keyword: Bash reads a whole pipeline after it (assignments such
                # as a[...]=1 with blanks in the subscript too), the parser only words
                return Refusal("after time, Bash reads this line differently from the parser")
            i = nxt
            continue
        if base == "let":
            return None if numeric else Refusal("let evaluates its arguments", arithmetic=True)
        if base in _WHOLE_LINE:
            return Refusal(_WHOLE_LINE[base], code=base not in _NAME_TAKERS)
        if base in SHELLS:
            return _interpreter_refusal(_SHELL, base, words, i, w)
        if _PYTHON.match(base):
            return _interpreter_refusal(_PYTHON_SPEC, base, words, i, w)
        previous = words[w - 1].text
        if base == "find" and any(word.text in _FIND_RUNS for word in words[i + 1 : w]):
            return Refusal("find -exec runs the words after it as a command", code=True)
        if base == "printf" and previous == "-v":
            return Refusal(
                "printf -v assigns to the variable name it is given (a subscript in a name runs)"
            )
        if base == "test" and previous == "-v":
            return Refusal("test -v evaluates a subscript in the variable name it is given")
        return None


def _after_wrapper(
    spec: _Wrapper, base: str, words: Sequence[Word], i: int, w: int
) -> int | Refusal | None:
    """Index of the command a wrapper runs; a refusal if the value may be it; None if none."""
    j = i + 1
    positional = spec.positional
    while j < len(words):
        word = words[j]
        text = word.text
        if not word.single and j <= w:
            return Refusal(f"this word may split into several, and {base} runs one as a command")
        if (
            spec.assignments
            and word.assign is not None
            and (text is None or not text.startswith("-"))
        ):
            if j == w and word.assign in CODE_VARIABLES:
                return Refusal(f"{word.assign} tells Bash or the loader what code to run")
            j += 1
            continue
        if text is None and positional:
            positional -= 1  # timeout's DURATION: data for the wrapper
            j += 1
            continue
        if text is None:
            if j == w:
                return Refusal(f"a value cannot be the command to run ({base} runs it)")
            if j < w:
                return Refusal(f"{base} may run a word before this one as the command")
            return None
        if text in spec.args:
            j += 2  # the option and its argument (a value there is data for the wrapper)
            continue
        if text in spec.flags or text.split("=", 1)[0] in spec.args:
            j += 1
            continue
        if spec.numeric_flags and re.fullmatch(r"-[0-9]+", text):
            j += 1
            continue
        if text.startswith("-") and text != "-":
            if j > w:
                return None  # the value came before: an option argument of the wrapper
            return Refusal(f"{base} option {text} is not known, so which word runs is unknown")
        if positional:
            positional -= 1
            j += 1
            continue
        return j
    return None


def _interpreter_refusal(
    spec: _Interpreter, base: str, words: Sequence[Word], i: int, w: int
) -> Refusal | None:
    """A value may be an argument after the code or script, never the code, script or an option."""
    j = i + 1
    code_flag = False
    while j < len(words) and j < w:
        text = words[j].text
        if text is None:
            return Refusal(f"{base} may take the word {j - i} as an option, code or script", True)
        if text == "--" or (text == "-" and spec.code_is_operand):
            j += 1
            break
        if (
            text == "-"
            or text[:1] not in ("-", "+")
            or (text[0] == "+" and not spec.code_is_operand)
        ):
            break  # the first operand
        j += 1
        if text.startswith("--"):
            j += 1 if "=" not in text and text in spec.arg_long else 0
            continue
        for k, ch in enumerate(text[1:]):
            attached = text[k + 2 :]
            if spec.code_is_operand and ch == "c":
                code_flag = True
            elif ch in spec.code_short:
                code_at = j - 1 if attached else j
                if w <= code_at:
                    return Refusal(f"{base} -{ch} runs this argument as code", code=True)
                return None  # what follows -c CODE / -m MODULE is the program's arguments
            elif ch in spec.arg_short:
                j += 0 if attached else 1
                break
    if j >= w:
        # the value would be an option, or the operand that is the code (sh -c) or the script
        what = "code" if code_flag else "an option or the script to run"
        return Refusal(f"{base} takes this argument as {what}", code=True)
    return None
