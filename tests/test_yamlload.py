"""Safe YAML loading: plain data with the line of every path; hostile documents refused fast."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runbook_celery.core.errors import DefinitionError
from runbook_celery.definition import yamlload
from runbook_celery.definition.yamlload import (
    MAX_DEPTH,
    MAX_NODES,
    format_path,
    load_yaml_bytes,
    load_yaml_file,
    load_yaml_text,
)

pytestmark = pytest.mark.timeout(20)

LIMIT = 2 * 1024 * 1024


@pytest.fixture(params=["libyaml", "pure-python"])
def parser(request, monkeypatch):  # type: ignore[no-untyped-def]
    """Run a test against both PyYAML parsers: the C one and the pure-Python fallback."""
    if request.param == "libyaml":
        if not yaml.__with_libyaml__:
            pytest.skip("PyYAML was built without libyaml")
        monkeypatch.setattr(yamlload, "_Loader", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(yamlload, "_Loader", yaml.SafeLoader)
    return request.param


def refused(source: str | bytes) -> DefinitionError:
    """Load text or bytes that must be refused; return the error."""
    with pytest.raises(DefinitionError) as info:
        if isinstance(source, bytes):
            load_yaml_bytes(source, file="wf.yaml", max_bytes=LIMIT)
        else:
            load_yaml_text(source, file="wf.yaml")
    return info.value


def nested(levels: int, kind: str) -> str:
    """A document ``levels`` containers deep, in a few tiny spellings."""
    if kind == "flow-sequence":
        return "[" * levels + "]" * levels
    if kind == "flow-mapping":
        return "{a: " * levels + "1" + "}" * levels
    assert kind == "block-sequence"
    return "- " * levels + "x\n"


# ---------------------------------------------------------------- data and lines


def test_every_value_knows_its_line(parser):
    doc = load_yaml_text(
        "name: demo\n"  # 1
        "steps:\n"  # 2
        "  - id: a\n"  # 3
        "    run: |\n"  # 4
        "      echo hi\n"  # 5
        "  - id: b\n"  # 6
        "    needs: [a]\n",  # 7
        file="wf.yaml",
    )
    assert doc.data == {
        "name": "demo",
        "steps": [{"id": "a", "run": "echo hi\n"}, {"id": "b", "needs": ["a"]}],
    }
    assert doc.file == "wf.yaml"
    assert doc.lines[()] == 1
    assert doc.lines[("name",)] == 1
    assert doc.lines[("steps",)] == 2
    assert doc.lines[("steps", 0)] == 3
    assert doc.lines[("steps", 0, "run")] == 4
    assert doc.lines[("steps", 1)] == 6
    assert doc.lines[("steps", 1, "needs")] == 7
    assert doc.lines[("steps", 1, "needs", 0)] == 7


def test_line_of_a_path_beyond_the_yaml_is_its_deepest_known_prefix():
    doc = load_yaml_text("name: x\nsteps:\n  - id: a\n")
    assert doc.line_of(("steps", 0, "id", "deeper", 3)) == 3
    assert doc.line_of(("nope",)) == 1  # the root mapping


def test_format_path_reads_like_the_yaml():
    assert format_path(()) == ""
    assert format_path(("steps",)) == "steps"
    assert format_path(("steps", 2, "needs", 0)) == "steps[2].needs[0]"
    assert format_path(("env", "HOME")) == "env.HOME"


def test_scalars_become_plain_json_like_values(parser):
    data = load_yaml_text(
        "s: hello\nq: '42'\ni: 42\nneg: -7\nf: 1.5\nt: true\nn: null\ntilde: ~\nempty:\n"
    ).data
    assert data == {
        "s": "hello",
        "q": "42",
        "i": 42,
        "neg": -7,
        "f": 1.5,
        "t": True,
        "n": None,
        "tilde": None,
        "empty": None,
    }


def test_dates_stay_the_text_that_was_written(parser):
    # workflows have no date type; a release date param must not become datetime.date
    assert load_yaml_text("released: 2024-01-31\n").data == {"released": "2024-01-31"}


@pytest.mark.parametrize("key", ["true", "yes", "on", "1", "0x10", "~", "null", "2024-01-31"])
def test_mapping_keys_are_the_text_written_not_the_scalar_it_resolves_to(parser, key):
    assert load_yaml_text(f"{key}: v\n").data == {key: "v"}


def test_anchors_and_aliases_share_values(parser):
    data = load_yaml_text("a: &x [1, 2]\nb: *x\nc: &s text\nd: *s\n").data
    assert data == {"a": [1, 2], "b": [1, 2], "c": "text", "d": "text"}


def test_an_anchored_key_can_be_reused_as_a_key(parser):
    assert load_yaml_text("&k name: 1\nother:\n  *k : 2\n").data == {
        "name": 1,
        "other": {"name": 2},
    }


def test_a_utf8_byte_order_mark_is_accepted(parser):
    doc = load_yaml_bytes(b"\xef\xbb\xbfname: x\n", file="wf.yaml", max_bytes=LIMIT)
    assert doc.data == {"name": "x"}


def test_non_ascii_text_is_kept(parser):
    doc = load_yaml_bytes("name: café ☕\n".encode(), file="wf.yaml", max_bytes=LIMIT)
    assert doc.data == {"name": "café ☕"}


# ---------------------------------------------------------------- definition mistakes


def test_duplicate_key_points_at_its_second_occurrence(parser):
    err = refused("name: a\nsteps: []\nname: b\n")
    assert err.line == 3
    assert err.problem.path == "name"
    assert err.problem.message == "duplicate key 'name'"


def test_duplicate_key_inside_a_step_names_its_path(parser):
    err = refused("steps:\n  - id: a\n    run: x\n    run: y\n")
    assert err.line == 4
    assert err.problem.path == "steps[0].run"
    assert "duplicate key 'run'" in err.problem.message


def test_keys_that_resolve_alike_but_are_written_differently_are_not_duplicates(parser):
    assert load_yaml_text("1: a\n01: b\n").data == {"1": "a", "01": "b"}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("name: x\nsteps:\n  - id: a\n    run: [oops\n", 5, "expected ',' or ']'"),
        ("name: x\n  steps: 1\n", 2, "mapping values are not allowed"),
        ("name: 'unterminated\nsteps: []\n", 3, "found unexpected end of stream"),
        ("name: x\nsteps:\n\t- id: a\n", 3, "YAML indentation must be spaces"),
        ("a: *nothing\n", 1, "alias *nothing has no anchor before it"),
    ],
    ids=["unclosed-flow", "bad-indent", "unclosed-quote", "tab", "undefined-alias"],
)
def test_syntax_errors_carry_the_line(parser, text, line, fragment):
    err = refused(text)
    assert err.line == line
    assert fragment in err.problem.message
    assert "\n" not in err.problem.message


def test_an_unclosed_construct_names_the_line_it_started_on(parser):
    err = refused("name: x\ndescription: 'never closed\nsteps: []\n")
    assert err.line == 4  # where the parser gave up
    assert "quoted scalar on line 2" in err.problem.message  # where the fix belongs


def test_a_second_document_is_refused(parser):
    err = refused("name: a\n---\nname: b\n")
    assert err.line == 2
    assert "expected a single document" in err.problem.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "   \n# c\n"])
def test_a_file_without_a_document_is_empty(parser, text):
    err = refused(text)
    assert err.line == 1
    assert err.problem.message == "file is empty; expected a workflow mapping"


def test_merge_keys_are_refused(parser):
    err = refused("base: &b {id: a}\nsteps:\n  - <<: *b\n    run: x\n")
    assert err.line == 3
    assert "merge keys (<<) are not supported" in err.problem.message


@pytest.mark.parametrize(
    "text",
    ["? [a, b]\n: c\n", "? {a: 1}\n: c\n", "k: &l [1]\n*l : 2\n"],
    ids=["sequence-key", "mapping-key", "alias-to-sequence-key"],
)
def test_keys_must_be_plain_strings(parser, text):
    err = refused(text)
    assert "mapping keys must be plain strings" in err.problem.message
    assert err.line in (1, 2)


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("name: !!binary aGVsbG8=\n", "!!binary"),
        ("s: !!set {a, b}\n", "!!set"),
        ("s: !!omap [a: 1]\n", "!!omap"),
        ("s: !!python/object:os.system x\n", "!!python/object:os.system"),
        ("s: !!python/name:os.system\n", "!!python/name:os.system"),
        ("s: !custom text\n", "!custom"),
        ("s: !custom {a: 1}\n", "!custom"),
    ],
)
def test_tags_beyond_plain_data_are_refused(parser, text, tag):
    err = refused(text)
    assert err.line == 1
    assert err.problem.message == f"unsupported YAML tag {tag}"


@pytest.mark.parametrize("text", ["n: !!int abc\n", "n: !!float many\n", "n: !!bool maybe\n"])
def test_a_value_that_does_not_fit_its_explicit_tag_is_refused(parser, text):
    err = refused(text)
    assert err.line == 1
    assert err.problem.path == "n"
    assert err.problem.message.startswith("bad value")


def test_explicit_core_tags_are_honoured(parser):
    assert load_yaml_text("a: !!str 42\nb: !!int '7'\nc: !!map {x: 1}\n").data == {
        "a": "42",
        "b": 7,
        "c": {"x": 1},
    }


# ---------------------------------------------------------------- bytes that are not YAML text


def test_non_utf8_bytes_name_the_byte_offset_and_line():
    err = refused(b"name: x\nsteps:\n  - id: caf\xe9\n")
    assert err.line == 3
    assert err.problem.message == "not valid UTF-8 text (byte 0xe9 at offset 26)"


def test_a_nul_byte_means_not_a_text_file():
    err = refused(b"name: x\nsteps: \x00\x00\n")
    assert err.line == 2
    assert "NUL byte" in err.problem.message


def test_utf16_text_is_not_utf8():
    err = refused("name: x\n".encode("utf-16"))
    assert "not valid UTF-8" in err.problem.message


def test_a_control_character_is_refused_on_its_line(parser):
    # the non-ASCII text before it checks that byte offsets are not taken for characters
    err = refused("name: é€☕\ndescription: ok\nsteps: x\x07y\n")
    assert err.line == 3
    assert err.problem.message.startswith("unacceptable character U+0007")
    assert "\n" not in err.problem.message


@pytest.mark.parametrize("seed", range(5))
def test_random_binary_garbage_is_refused_without_a_crash(seed):
    garbage = random.Random(seed).randbytes(4096)
    err = refused(garbage)
    assert err.line is not None
    assert "\n" not in err.problem.message


def test_an_image_is_refused_as_non_utf8():
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    assert refused(png).problem.message == "not valid UTF-8 text (byte 0x89 at offset 0)"


# ---------------------------------------------------------------- hostile documents


def billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_without_expanding_it(parser, monkeypatch):
    """Aliases are counted, never copied: the 9 strings of l0 are the only values built,
    and the load stops at the alias that takes the count past the limit."""
    text = billion_laughs()  # 9**9 = 387 million strings once expanded
    built: list[str] = []
    scalar = yamlload._Builder._scalar

    def counting(self, event, path):  # type: ignore[no-untyped-def]
        built.append(event.value)
        return scalar(self, event, path)

    monkeypatch.setattr(yamlload._Builder, "_scalar", counting)
    err = refused(text)
    assert err.problem.message == (
        f"document expands to more than {MAX_NODES} values (alias bomb?)"
    )
    assert built == ["lol"] * 9
    # l_i counts 9**(i+1) values: the first line whose total passes the limit is refused
    total, line = 0, 0
    while total <= MAX_NODES:
        total += 9 ** (line + 1)
        line += 1
    assert err.line == line


def test_a_flat_document_past_the_value_limit_is_refused():
    err = refused("[" + "1, " * (MAX_NODES + 1) + "]\n")
    assert err.problem.message == f"document has more than {MAX_NODES} values"


def test_ordinary_aliases_stay_well_inside_the_limit(parser):
    assert len(load_yaml_text(billion_laughs(levels=4)).data) == 4  # 9**4 values


@pytest.mark.parametrize("kind", ["flow-sequence", "flow-mapping", "block-sequence"])
def test_nesting_up_to_the_limit_is_fine_and_one_more_level_is_refused(parser, kind):
    load_yaml_text(nested(MAX_DEPTH, kind))
    err = refused(nested(MAX_DEPTH + 2, kind))
    assert err.problem.message == f"nested deeper than {MAX_DEPTH} levels"
    assert err.line == 1


SIMPLE_KEY_LOOKAHEAD = 1024  # characters YAML lets a scanner look ahead for a simple key


@pytest.mark.parametrize("kind", ["flow-sequence", "flow-mapping", "block-sequence"])
def test_a_document_nested_10000_levels_is_refused_at_the_first_event_past_the_limit(
    parser, kind, monkeypatch
):
    """Refused quickly, measured in work rather than time: the loader takes no event after
    the one that goes past the limit, and the scanner reads no further ahead than YAML's
    simple-key lookahead, so the cost does not grow with the rest of the document."""
    seen: dict[str, int] = {"events": 0, "end": 0, "read": 0}

    class Counting(yamlload._Loader):  # type: ignore[name-defined,misc]
        def get_event(self):  # type: ignore[no-untyped-def]
            event = super().get_event()
            seen["events"] += 1
            seen["end"] = max(seen["end"], event.end_mark.index)
            seen["read"] = max(seen["read"], getattr(self, "pointer", 0))  # pure-Python reader
            return event

    monkeypatch.setattr(yamlload, "_Loader", Counting)
    text = nested(10_000, kind)
    err = refused(text)
    assert err.problem.message == f"nested deeper than {MAX_DEPTH} levels"
    assert len(err.problem.path) < 60  # the shown path is shortened
    # stream and document start, a container and a key per level up to one level past the
    # limit, and the event whose place shows it
    assert seen["events"] <= 3 + 2 * (MAX_DEPTH + 1)
    assert seen["end"] <= len("{a: ") * (MAX_DEPTH + 2)  # the longest level spelled here
    assert seen["read"] <= seen["end"] + SIMPLE_KEY_LOOKAHEAD + 2
    assert len(text) > 10 * (seen["end"] + SIMPLE_KEY_LOOKAHEAD)


def test_an_alias_cannot_smuggle_nesting_past_the_limit(parser):
    inner = "[" * 60 + "]" * 60
    outer = "[" * 60 + "*deep" + "]" * 60
    err = refused(f"a: &deep {inner}\nb: {outer}\n")
    assert err.problem.message == f"nested deeper than {MAX_DEPTH} levels"
    assert err.line == 2


def test_an_alias_inside_its_own_anchor_is_refused(parser):
    err = refused("a: &loop [1, *loop]\n")
    assert err.line == 1
    assert err.problem.message == "alias *loop refers to itself"


class _LoaderWithLibyamlsNestingLimit(yaml.SafeLoader):
    """The pure-Python loader with the flow-level limit libyaml 0.2.6 (PyYAML 6.0.4) added.

    libyaml's scanner looks ahead for a possible simple key and raises this error before
    the parser has handed out the events our own limit would catch.
    """

    LIMIT = 1000

    def fetch_flow_collection_start(self, TokenClass):  # type: ignore[no-untyped-def]
        if self.flow_level >= self.LIMIT:
            mark = self.get_mark()
            raise yaml.scanner.ScannerError(
                "while increasing flow level", mark, "exceeded maximum nesting depth", mark
            )
        super().fetch_flow_collection_start(TokenClass)


@pytest.mark.parametrize("prefix", ["", "name: deep\nsteps: "])
def test_a_parsers_own_nesting_limit_is_reported_as_ours(monkeypatch, prefix):
    # Whatever PyYAML the dependency range allows, the message and its line are ours
    monkeypatch.setattr(yamlload, "_Loader", _LoaderWithLibyamlsNestingLimit)
    err = refused(prefix + "[" * 10_000 + "]" * 10_000)
    assert err.problem.message == f"nested deeper than {MAX_DEPTH} levels"
    assert err.line == prefix.count("\n") + 1
    assert str(err).startswith(f"wf.yaml:{err.line}: ")


def test_a_document_nested_100000_levels_is_refused_without_crashing_python():
    # libyaml's own composer recursed in C and took the interpreter down with SIGSEGV here
    code = (
        "from runbook_celery.definition.yamlload import load_yaml_text\n"
        "from runbook_celery.core.errors import DefinitionError\n"
        "try:\n"
        "    load_yaml_text('[' * 100_000 + ']' * 100_000)\n"
        "except DefinitionError as exc:\n"
        "    print(exc.problem.message)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"nested deeper than {MAX_DEPTH} levels"


# ---------------------------------------------------------------- files


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        line = b"# padding padding padding padding padding padding padding padding\n"
        fh.write(line * (20 * 1024 * 1024 // len(line) + 1))
    size = big.stat().st_size

    def not_read(*_: object, **__: object) -> bytes:
        raise AssertionError("the file was read")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "read_bytes", not_read)
        mp.setattr(Path, "read_text", not_read)
        mp.setattr(Path, "open", not_read)
        with pytest.raises(DefinitionError) as info:
            load_yaml_file(big, max_bytes=LIMIT)
    assert info.value.line is None
    assert info.value.problem.message.startswith(
        f"file is {size} bytes, larger than the {LIMIT}-byte limit"
    )


def test_bytes_over_the_size_limit_are_refused():
    with pytest.raises(DefinitionError) as info:
        load_yaml_bytes(b"a: 1\n" * 10, file="wf.yaml", max_bytes=20)
    assert info.value.problem.message == "file is 50 bytes, larger than the 20-byte limit"


def test_a_missing_file_and_a_directory_are_definition_errors(tmp_path: Path):
    with pytest.raises(DefinitionError) as missing:
        load_yaml_file(tmp_path / "no.yaml", max_bytes=LIMIT)
    assert missing.value.problem.message == "file not found"
    with pytest.raises(DefinitionError) as folder:
        load_yaml_file(tmp_path, max_bytes=LIMIT)
    assert folder.value.problem.message == "is a directory, not a workflow file"


def test_a_file_keeps_its_name_in_every_problem(tmp_path: Path):
    path = tmp_path / "deploy.yaml"
    path.write_text("name: a\nname: b\n")
    with pytest.raises(DefinitionError) as info:
        load_yaml_file(path, max_bytes=LIMIT)
    assert info.value.file == str(path)
    assert str(info.value) == f"{path}:2: name: duplicate key 'name'"
