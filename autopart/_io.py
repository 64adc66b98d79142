"""File reads and atomic writes: readers (and concurrent writers) never see a partial file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON document in file ``path``, a ``what`` (e.g. ``"plan"``, for messages).

    Raises:
        TypeError: ``path`` is not a str or os.PathLike.
        FileNotFoundError: no such file (the message names it).
        ValueError: ``path`` is a folder, or the file is not JSON (names the line and column).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected the path of a {what} JSON file, got {type(path).__name__} {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; give the path of a {what} JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(2, f"{what} file not found", str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path``: a temporary file in the same folder, flushed to disk
    (``fsync``), made readable (mkstemp creates it 0600), then renamed over ``path``
    (``os.replace``, atomic on POSIX). The temporary file is removed on failure.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
