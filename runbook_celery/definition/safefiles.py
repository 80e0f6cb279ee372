"""Reading files a definition names, or a definitions folder holds, without being led astray.

A definition is written by someone who may not run the worker fleet, so what it makes us
read is untrusted: ``script: ../../etc/passwd``, a symlink out of the folder,
``/proc/self/environ`` (the worker's own secrets), ``/dev/zero`` (endless) or a FIFO
(``open`` blocks forever) must each be refused with a sentence saying what to do, not read.

The rules, for ``script:`` and for files found by listing a definitions folder:

- a relative path must stay inside the folder after resolving symlinks; an absolute path
  is taken as the author's explicit choice (but see the next rules);
- nothing under ``/proc``, ``/sys`` or ``/dev`` (pseudo-files claim to be regular);
- it must be a regular file of at most ``RUNBOOK_MAX_FILE_BYTES`` bytes, UTF-8 without NUL.

Opening cannot hang or race: the file is opened with ``O_NONBLOCK`` (a FIFO opens at once),
``O_NOFOLLOW`` (the last component was resolved already), and what was opened is checked on
the descriptor itself (``fstat``, and its path in ``/proc/self/fd``), so a file swapped for a
symlink or a FIFO between the check and the open is still refused.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

WORKFLOW_SUFFIXES = (".yaml", ".yml")
# Pseudo-file systems: their files say "regular" but are the kernel's or a device's.
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")
_OPEN_FLAGS = (
    os.O_RDONLY
    | os.O_NONBLOCK
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class Refused(Exception):
    """A file we will not read; ``str()`` says why and what to do instead."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line  # a line inside the refused file (a NUL byte), if any


@dataclass(frozen=True)
class Listing:
    """A definitions folder: workflow files to read, and entries refused with the reason."""

    files: list[Path]
    refused: list[tuple[Path, str]]


def read_script(name: str, base_dir: Path, *, max_bytes: int) -> str:
    """The text of the script a definition names (``script: name``), relative to its folder.

    Raises:
        Refused: outside the folder, not a regular file, too large, or not UTF-8 text.
    """
    path = Path(name)
    if path.is_absolute():
        return read_text(path, max_bytes=max_bytes, within=None)
    target = os.path.realpath(base_dir / path)
    folder = os.path.realpath(base_dir)
    if not _within(target, folder):
        raise Refused(
            f"resolves to {target}, outside the workflow's folder {folder}; move the script "
            "into the folder, or write its absolute path if it really lives elsewhere"
        )
    return read_text(target, max_bytes=max_bytes, within=folder)


def read_text(path: str | Path, *, max_bytes: int, within: str | None) -> str:
    """A regular text file, read without hanging; ``within``: a folder it must stay in."""
    raw = read_bytes(path, max_bytes=max_bytes, within=within)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise Refused(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8",
            line,
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise Refused("contains a NUL byte, so it is not a text file; remove it", line)
    return text


def read_bytes(path: str | Path, *, max_bytes: int, within: str | None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, checked on the open descriptor."""
    name = str(path)
    real = os.path.realpath(name)
    _refuse_pseudo(real)
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except FileNotFoundError:
        raise Refused("file not found") from None
    except OSError as exc:
        raise Refused(f"cannot open it: {exc.strerror or exc}") from None
    try:
        opened = _opened_path(fd) or real
        _refuse_pseudo(opened)
        if within is not None and not _within(opened, within):
            raise Refused(f"resolves to {opened}, outside the folder {within}; not read")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"is {_kind(st.st_mode)}, not a regular file; name a regular file")
        if st.st_size > max_bytes:
            raise Refused(_too_large(st.st_size, max_bytes))
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(65536, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew while we read
                raise Refused(_too_large(total, max_bytes))
        return b"".join(chunks)
    except OSError as exc:
        raise Refused(f"cannot read it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def list_definitions(directory: Path) -> Listing:
    """``*.yaml``/``*.yml`` entries of ``directory`` that are regular files inside it.

    A symlink is followed only when it stays in the folder, and nothing is opened here:
    FIFOs, devices and directories are refused by ``lstat``/``stat`` alone.
    """
    folder = os.path.realpath(directory)
    files: list[Path] = []
    refused: list[tuple[Path, str]] = []
    for entry in sorted(directory.iterdir()):
        if entry.suffix not in WORKFLOW_SUFFIXES:
            continue
        try:
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                target = os.path.realpath(entry)
                if not _within(target, folder):
                    why = f"symlink to {target}, outside the folder; not read (copy the file in)"
                    refused.append((entry, why))
                    continue
                mode = os.stat(target).st_mode
        except FileNotFoundError:  # removed while listed, or a dangling symlink
            continue
        except OSError as exc:
            refused.append((entry, f"cannot read it: {exc.strerror or exc}"))
            continue
        if stat.S_ISDIR(mode):
            continue  # a folder named like a file: not a definition, not an error
        if not stat.S_ISREG(mode):
            why = f"is {_kind(mode)}, not a regular file; not read (remove it or rename it)"
            refused.append((entry, why))
            continue
        files.append(entry)
    return Listing(files, refused)


def _within(path: str, folder: str) -> bool:
    with contextlib.suppress(ValueError):  # different drives (Windows)
        return os.path.commonpath([path, folder]) == folder
    return False


def _refuse_pseudo(real: str) -> None:
    for root in _PSEUDO_ROOTS:
        if _within(real, root):
            raise Refused(
                f"resolves to {real}, a pseudo-file of the system ({root}), not a file a "
                "definition may read; name a regular file"
            )


def _opened_path(fd: int) -> str | None:
    """Where the descriptor really points (Linux); None where /proc is not mounted."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _too_large(size: int, cap: int) -> str:
    return f"file is {size} bytes, larger than the {cap}-byte limit (RUNBOOK_MAX_FILE_BYTES)"
