"""Reading files a user names: regular files only, refused at once otherwise.

Every reader of a user-named file (split files, few-shot pickles, class-name lists,
vocabularies, ``evaluation.json``, model configs, images, a table's JSON) opens it here.
The file is opened without blocking and checked on the open descriptor, so a FIFO is
refused instead of hanging the read, a directory or a device is refused with what was
expected, and a path with a NUL byte or of the wrong type is refused by name — all as the
caller's error type (a :class:`~fdbpl.errors.FDBPLError`, hence a ``ValueError``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fdbpl.errors import InputValueError

__all__ = ["read_file_bytes", "read_file_text", "regular_file"]


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


def _path(path: object, what: str, error: type[Exception]) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise error(f"{what}: expected a file path, got {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise error(f"{what}: expected a file path, got an empty string")
    if "\x00" in text:
        raise error(f"{what}: the path {text!r} contains a NUL byte")
    return text


def _refusal(path: str, what: str, expected: str, error: type[Exception], kind: str) -> Exception:
    return error(f"{what}: {path} is {kind}; expected {expected}")


def regular_file(
    path: object, what: str, expected: str = "a regular file", error: type[Exception] = InputValueError
) -> Path:
    """``path`` as a :class:`~pathlib.Path`, once it names an existing regular file.

    Args:
        path: the user's path (``str`` or path-like).
        what: how the user named it (an option or argument: ``"--classnames"``), first in
            every message.
        expected: what the file should be (``"a JSON split file"``), said when it is not.
        error: the exception type to raise (the caller's own error class).

    Raises:
        error: not a path, an empty path, a NUL byte, a missing path, or something other
            than a regular file (a directory, a FIFO, a device, a socket).
    """
    text = _path(path, what, error)
    try:
        mode = os.stat(text).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{what}: {text} does not exist; expected {expected}") from None
    except OSError as e:
        raise error(f"{what}: cannot read {text} ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise _refusal(text, what, expected, error, _kind(mode))
    return Path(text)


def read_file_bytes(
    path: object, what: str, expected: str = "a regular file", error: type[Exception] = InputValueError
) -> bytes:
    """The bytes of a regular file (see :func:`regular_file` for the arguments).

    The file is opened non-blocking and checked on its descriptor, so a path swapped for a
    FIFO after a check still cannot hang the read.
    """
    text = str(regular_file(path, what, expected, error))
    try:
        fd = os.open(text, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise error(f"{what}: {text} does not exist; expected {expected}") from None
    except OSError as e:
        raise error(f"{what}: cannot read {text} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refusal(text, what, expected, error, _kind(mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return f.read()


def read_file_text(
    path: object, what: str, expected: str = "a UTF-8 text file", error: type[Exception] = InputValueError
) -> str:
    """A regular file's UTF-8 text; bytes that are not UTF-8 are refused at their offset."""
    data = read_file_bytes(path, what, expected, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{what}: {path} is not UTF-8 text ({e.reason} at byte {e.start}); expected {expected}"
        ) from None
