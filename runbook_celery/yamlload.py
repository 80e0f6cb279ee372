"""Safe YAML loading that keeps source lines and refuses hostile documents.

PyYAML's composer gives us a node graph with marks; we build plain Python data from it
ourselves so that we can (a) remember the line of every value by its path, (b) reject
duplicate keys, and (c) bound alias expansion and nesting, which defeats "billion laughs".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import DefinitionError

try:  # the C composer is much faster; fall back to pure Python where libyaml is absent
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_NODES = 100_000  # values after alias expansion
MAX_DEPTH = 100  # nesting of mappings/sequences

YamlPath = tuple[str | int, ...]


@dataclass
class LoadedYaml:
    """Parsed data plus the source line (1-based) of every path in it."""

    data: Any
    file: str
    lines: dict[YamlPath, int] = field(default_factory=dict)

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
    """Read and parse one workflow file, raising DefinitionError on any problem."""
    name = str(path)
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise DefinitionError(
                f"file is {size} bytes, larger than the {max_bytes}-byte limit "
                "(RUNBOOK_MAX_FILE_BYTES)",
                file=name,
            )
        raw = p.read_bytes()
    except DefinitionError:
        raise
    except IsADirectoryError:
        raise DefinitionError("is a directory, not a workflow file", file=name) from None
    except FileNotFoundError:
        raise DefinitionError("file not found", file=name) from None
    except OSError as exc:
        raise DefinitionError(f"cannot read file: {exc.strerror or exc}", file=name) from None
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
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}, {problem}"
        raise DefinitionError(f"YAML syntax error: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"YAML error: {exc}", file=file) from None
    except RecursionError:
        raise DefinitionError(
            f"YAML nested too deeply (limit {MAX_DEPTH} levels)", file=file
        ) from None
    if node is None:
        raise DefinitionError("file is empty; expected a workflow mapping", file=file, line=1)
    builder = _Builder(file)
    data = builder.build(node, (), 0)
    return LoadedYaml(data=data, file=file, lines=builder.lines)


class _Builder:
    """Turns a composed node graph into Python data, recording lines and enforcing limits."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[YamlPath, int] = {}
        self.count = 0
        self._constructor = yaml.SafeLoader("")  # only for scalar resolution

    def _fail(self, message: str, node: yaml.Node, path: YamlPath) -> DefinitionError:
        shown = path if len(path) <= 8 else (*path[:4], "...")
        return DefinitionError(
            message, file=self.file, line=node.start_mark.line + 1, path=format_path(shown)
        )

    def build(self, node: yaml.Node, path: YamlPath, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self._fail(
                f"document expands to more than {MAX_NODES} values (alias bomb?)", node, path
            )
        if depth > MAX_DEPTH:
            raise self._fail(f"nested deeper than {MAX_DEPTH} levels", node, path)
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self._constructor.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                raise self._fail(f"bad value: {exc}", node, path) from None
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise self._fail("YAML merge keys (<<) are not supported", key_node, path)
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self._fail("mapping keys must be plain strings", key_node, path)
                key = self._constructor.construct_object(key_node)
                if not isinstance(key, str):
                    key = str(key) if isinstance(key, bool | int | float) else key
                if key in out:
                    raise self._fail(f"duplicate key {key!r}", key_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, (*path, key), depth + 1)
            return out
        raise self._fail("unsupported YAML node", node, path)  # pragma: no cover
