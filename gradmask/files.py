"""Files written whole or not at all: every checkpoint, cache entry, run record and report."""
from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Union

Content = Union[str, bytes, Callable[[IO[bytes]], None]]


def write_atomic(path: Union[str, os.PathLike], content: Content) -> Path:
    """Write ``content`` (text as UTF-8, bytes, or ``fn(binary_file)`` such as
    ``lambda f: torch.save(obj, f)``) to a temporary file beside ``path``, fsync it, make it
    readable like an ordinary file (0644), then ``os.replace`` it over ``path``: a reader, or a kill
    mid-write, never sees a partial file. The temporary file is removed on failure. Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_csv(path: Union[str, os.PathLike], header: list, rows) -> Path:
    """Write ``header`` and ``rows`` (sequences of cells, ``None`` as an empty cell) as CSV with
    ``\n`` line ends, through :func:`write_atomic`. Returns ``path``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return write_atomic(path, buf.getvalue())
