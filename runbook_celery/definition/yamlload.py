"""Safe YAML loading that keeps source lines and refuses hostile documents.

We build plain Python data straight from PyYAML's event stream rather than its composed
node graph, so that we can (a) remember the line of every value by its path, (b) reject
duplicate keys, and (c) stop at the first event past the nesting or alias-expansion limit.
Building iteratively from events matters: libyaml's composer recurses in C and crashes the
interpreter on a document nested ~100,000 levels deep, and it composes the whole document
before any limit could be checked.

Newer libyaml (bundled since PyYAML 6.0.4) has a nesting limit of its own (1,000 levels) that
its scanner can hit while looking ahead, before our builder has seen the event past ours.
Such a document is nested deeper than our limit too, so it gets our message, not libyaml's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.error import Mark

from ..core.errors import DefinitionError
from .fieldtypes import NUL_MESSAGE
from .safefiles import Refused, read_bytes

try:  # the C parser is much faster; fall back to pure Python where libyaml is absent
    from yaml import CSafeLoader

    _Loader: type[yaml.CSafeLoader] | type[yaml.SafeLoader] = CSafeLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

MAX_NODES = 100_000  # values after alias expansion
MAX_DEPTH = 100  # nesting of mappings/sequences

YamlPath = tuple[str | int, ...]

_CORE = "tag:yaml.org,2002:"
# Scalars become JSON-like values; anything else (binary, sets, custom tags) is refused.
_SCALAR_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null"))
_TIMESTAMP = _CORE + "timestamp"  # kept as the text written: workflows have no date type
_MERGE = _CORE + "merge"
_CONTAINER_TAGS = {yaml.SequenceStartEvent: _CORE + "seq", yaml.MappingStartEvent: _CORE + "map"}


@dataclass
class LoadedYaml:
    """Parsed data plus the source line (1-based) of every path in it."""

    data: Any
    file: str
    lines: dict[YamlPath, int] = field(default_factory=dict)
    # where each scalar value starts (line of its first character or block indicator) and its
    # style ("|", ">", '"', "'" or "" for plain), to point at a line inside a multi-line value
    scalars: dict[YamlPath, tuple[int, str]] = field(default_factory=dict)

    def line_in(self, path: YamlPath, text: str, offset: int) -> int | None:
        """Line of character ``offset`` of the string value at ``path``.

        Exact for block literals (``run: |``), whose lines are the file's lines; for other
        styles, lines of the value are counted from where it starts (folding may differ).
        """
        start = self.scalars.get(path)
        if start is None:
            return self.line_of(path)
        line, style = start
        within = text.count("\n", 0, offset)
        return line + within + (1 if style in ("|", ">") else 0)

    def line_of(self, path: YamlPath) -> int | None:
        """Line of the deepest known prefix of ``path`` (pydantic locs may go past YAML)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def format_path(path: YamlPath) -> str:
    """``('steps', 2, 'needs')`` -> ``steps[2].needs``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_yaml_file(path: str | Path, *, max_bytes: int) -> LoadedYaml:
    """Read and parse one workflow file, raising DefinitionError on any problem.

    Read through ``safefiles``: a FIFO, device or pseudo-file named here is refused, not
    waited on.
    """
    name = str(path)
    if Path(path).is_dir():
        raise DefinitionError("is a directory, not a workflow file", file=name)
    try:
        raw = read_bytes(path, max_bytes=max_bytes, within=None)
    except Refused as exc:
        raise DefinitionError(str(exc), file=name) from None
    return load_yaml_bytes(raw, file=name, max_bytes=max_bytes)


def load_yaml_bytes(raw: bytes, *, file: str, max_bytes: int) -> LoadedYaml:
    """Parse bytes of YAML (must be UTF-8) into data with line numbers."""
    if len(raw) > max_bytes:
        raise DefinitionError(
            f"file is {len(raw)} bytes, larger than the {max_bytes}-byte limit", file=file
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DefinitionError(
            f"not valid UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            file=file,
            line=line,
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DefinitionError("contains a NUL byte; not a text file", file=file, line=line)
    return load_yaml_text(text, file=file)


def load_yaml_text(text: str, *, file: str = "<string>") -> LoadedYaml:
    """Parse YAML text into data with line numbers."""
    builder = _Builder(file)
    try:
        data = builder.build(yaml.parse(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if _is_parser_nesting_limit(exc):
            raise builder.too_deep(mark.line + 1 if mark else None) from None
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc).splitlines()[0]
        if exc.context:
            context = exc.context
            started = exc.context_mark
            if started is not None and mark is not None and started.line != mark.line:
                context += f" on line {started.line + 1}"  # where the unclosed thing began
            problem = f"{context}, {problem}"
        if mark and _indented_with_tab(text, mark.line):
            problem += " (a tab indents this line; YAML indentation must be spaces)"
        raise DefinitionError(f"YAML syntax error: {problem}", file=file, line=line) from None
    except yaml.reader.ReaderError as exc:
        raise DefinitionError(
            _reader_message(exc), file=file, line=_reader_line(exc, text)
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above has a subclass
        raise DefinitionError(f"YAML error: {str(exc).splitlines()[0]}", file=file) from None
    if builder.documents == 0:
        raise DefinitionError("file is empty; expected a workflow mapping", file=file, line=1)
    return LoadedYaml(data=data, file=file, lines=builder.lines, scalars=builder.scalars)


def _is_parser_nesting_limit(exc: yaml.MarkedYAMLError) -> bool:
    """libyaml's own depth limit ("exceeded maximum nesting depth"), whatever its context."""
    return "nesting depth" in (exc.problem or "")


def _indented_with_tab(text: str, line_index: int) -> bool:
    lines = text.split("\n")
    if line_index >= len(lines):
        return False
    line = lines[line_index]
    return "\t" in line[: len(line) - len(line.lstrip())]


def _reader_message(exc: yaml.reader.ReaderError) -> str:
    char = exc.character
    code = ord(char) if isinstance(char, str) else char
    return f"unacceptable character U+{code:04X} ({exc.reason}); is this a text file?"


def _reader_line(exc: yaml.reader.ReaderError, text: str) -> int:
    # libyaml reports a byte offset into the UTF-8 encoding, the Python reader a character index
    if _Loader is yaml.SafeLoader:
        return text[: exc.position].count("\n") + 1
    return text.encode("utf-8")[: exc.position].count(b"\n") + 1


def _line(event: yaml.Event) -> int:
    """The line an event starts on (1-based). Both parsers mark every event they emit;
    an event made by hand may have no mark, as its type says."""
    assert event.start_mark is not None
    return event.start_mark.line + 1


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


@dataclass
class _Open:
    """A sequence or mapping whose end event has not arrived yet."""

    value: list[Any] | dict[str, Any]
    path: YamlPath
    anchor: str | None
    first_count: int  # values counted before this one, to size it for aliases
    height: int = 1  # levels of nesting inside and including this container
    key: str | None = None  # a mapping's key that still waits for its value
    key_pending: bool = False


class _Builder:
    """Turns a YAML event stream into Python data, recording lines and enforcing limits."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[YamlPath, int] = {}
        self.scalars: dict[YamlPath, tuple[int, str]] = {}
        self.count = 0
        self.documents = 0
        self.stack: list[_Open] = []
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # value, size, height
        self.building: set[str] = set()  # anchors of containers still open
        self._resolver = yaml.SafeLoader("")  # implicit tags and scalar construction

    def _fail(self, message: str, event: yaml.Event, path: YamlPath) -> DefinitionError:
        line = event.start_mark.line + 1 if event.start_mark else None
        return self._error(message, line, path)

    def _error(self, message: str, line: int | None, path: YamlPath) -> DefinitionError:
        shown = path if len(path) <= 8 else (*path[:4], "...")
        return DefinitionError(message, file=self.file, line=line, path=format_path(shown))

    def too_deep(self, line: int | None) -> DefinitionError:
        """The nesting error at ``line``, under the deepest container open so far."""
        path = self.stack[-1].path if self.stack else ()
        return self._error(f"nested deeper than {MAX_DEPTH} levels", line, path)

    def build(self, events: Iterable[yaml.Event]) -> Any:
        root: Any = None
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                self.documents += 1
                if self.documents > 1:
                    raise self._fail(
                        "YAML syntax error: expected a single document in the stream, "
                        "but found another document",
                        event,
                        (),
                    )
            elif isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                done = self._leaf(event)
                if done is not None:
                    root = done[0]
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                self._open(event)
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                done = self._close()
                if done is not None:
                    root = done[0]
        return root

    def _path_for_next(self, event: yaml.Event) -> YamlPath:
        """Where the value starting at ``event`` goes; records its line."""
        if not self.stack:
            path: YamlPath = ()
        else:
            top = self.stack[-1]
            if isinstance(top.value, list):
                path = (*top.path, len(top.value))
            else:
                path = (*top.path, top.key)  # type: ignore[arg-type]
        depth = len(self.stack)
        if depth > MAX_DEPTH:
            raise self._fail(f"nested deeper than {MAX_DEPTH} levels", event, path)
        self.lines.setdefault(path, _line(event))
        return path

    def _wants_key(self) -> bool:
        return (
            bool(self.stack)
            and isinstance(self.stack[-1].value, dict)
            and not self.stack[-1].key_pending
        )

    def _counted(self, n: int, event: yaml.Event, path: YamlPath) -> None:
        self.count += n
        if self.count > MAX_NODES:
            if isinstance(event, yaml.AliasEvent):
                message = f"document expands to more than {MAX_NODES} values (alias bomb?)"
            else:
                message = f"document has more than {MAX_NODES} values"
            raise self._fail(message, event, path)

    def _leaf(self, event: yaml.ScalarEvent | yaml.AliasEvent) -> tuple[Any] | None:
        if self._wants_key():
            self._key(event)
            return None
        path = self._path_for_next(event)
        if isinstance(event, yaml.AliasEvent):
            value, size, height = self._alias(event, path)
            self._counted(size, event, path)
            if len(self.stack) + height > MAX_DEPTH:
                raise self._fail(f"nested deeper than {MAX_DEPTH} levels", event, path)
        else:
            self._counted(1, event, path)
            value = self._scalar(event, path)
            self.scalars[path] = (_line(event), event.style or "")
            if event.anchor is not None:
                self.anchors[event.anchor] = (value, 1, 0)
        return self._place(value, 0)

    def _alias(self, event: yaml.AliasEvent, path: YamlPath) -> tuple[Any, int, int]:
        if event.anchor in self.building:
            raise self._fail(f"alias *{event.anchor} refers to itself", event, path)
        try:
            return self.anchors[event.anchor or ""]  # never "": an alias names its anchor
        except KeyError:
            raise self._fail(
                f"alias *{event.anchor} has no anchor before it", event, path
            ) from None

    def _scalar(self, event: yaml.ScalarEvent, path: YamlPath) -> Any:
        if "\x00" in event.value:  # written as "\0" or "\x00": a raw NUL byte fails earlier
            raise self._fail(NUL_MESSAGE, event, path)
        tag = event.tag
        if tag is None or tag == "!":
            tag = self._resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == _CORE + "str" or tag == _TIMESTAMP:
            return event.value
        if tag not in _SCALAR_TAGS:
            raise self._fail(f"unsupported YAML tag {_short_tag(tag)}", event, path)
        # libyaml's events carry yaml._yaml.Mark, with the fields of yaml.error.Mark that
        # types-PyYAML's ScalarNode names; the constructors only read them for messages
        start, end = cast("Mark", event.start_mark), cast("Mark", event.end_mark)
        node = yaml.ScalarNode(tag, event.value, start, end, event.style)
        try:
            return self._resolver.yaml_constructors[tag](self._resolver, node)
        except (yaml.YAMLError, ValueError, KeyError, TypeError):
            raise self._fail(
                f"bad value {event.value[:40]!r} for tag {_short_tag(tag)}", event, path
            ) from None

    def _key(self, event: yaml.ScalarEvent | yaml.AliasEvent) -> None:
        top = self.stack[-1]
        if isinstance(event, yaml.AliasEvent):
            value = self._alias(event, top.path)[0]
            if not isinstance(value, str | int | float | bool):
                raise self._fail("mapping keys must be plain strings", event, top.path)
            key = str(value)
        else:
            tag = event.tag
            if tag is None or tag == "!":
                tag = self._resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag == _MERGE:
                raise self._fail("YAML merge keys (<<) are not supported", event, top.path)
            if "\x00" in event.value:
                raise self._fail(f"a key {NUL_MESSAGE}", event, top.path)
            if event.anchor is not None:
                self.anchors[event.anchor] = (self._scalar(event, top.path), 1, 0)
            # `true:`, `1:` or `~:` as a key means the text written, not a bool/int/None
            key = event.value
        assert isinstance(top.value, dict)
        if key in top.value:
            raise self._fail(f"duplicate key {key!r}", event, (*top.path, key))
        self.lines[(*top.path, key)] = _line(event)
        top.key, top.key_pending = key, True

    def _open(self, event: yaml.SequenceStartEvent | yaml.MappingStartEvent) -> None:
        if self._wants_key():
            raise self._fail("mapping keys must be plain strings", event, self.stack[-1].path)
        path = self._path_for_next(event)
        self._counted(1, event, path)
        tag = event.tag
        if tag is not None and tag != "!" and tag != _CONTAINER_TAGS[type(event)]:
            raise self._fail(f"unsupported YAML tag {_short_tag(tag)}", event, path)
        value: list[Any] | dict[str, Any] = [] if isinstance(event, yaml.SequenceStartEvent) else {}
        self.stack.append(_Open(value, path, event.anchor, self.count - 1))
        if event.anchor is not None:
            self.building.add(event.anchor)

    def _close(self) -> tuple[Any] | None:
        done = self.stack.pop()
        if done.anchor is not None:
            self.building.discard(done.anchor)
            self.anchors[done.anchor] = (done.value, self.count - done.first_count, done.height)
        return self._place(done.value, done.height)

    def _place(self, value: Any, height: int) -> tuple[Any] | None:
        """Put a finished value into its parent; returns ``(value,)`` for the root."""
        if not self.stack:
            return (value,)
        top = self.stack[-1]
        top.height = max(top.height, height + 1)
        if isinstance(top.value, list):
            top.value.append(value)
        else:
            top.value[top.key] = value  # type: ignore[index]
            top.key, top.key_pending = None, False
        return None
