"""Files written whole or not at all (every checkpoint, cache entry, run record and report), and
the checksums of the files gradmask writes and later trusts (checkpoints, cache entries, step
results, run records): :func:`digest` of the content (:func:`json_digest` for JSON records),
stored under :data:`CHECKSUM` inside the file, verified on load by :func:`verify`
(:func:`read_record` for a JSON record)."""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

Content = Union[str, bytes, Callable[[IO[bytes]], None]]
CHECKSUM = "checksum"  # the key of a file's checksum inside it
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class ChecksumError(ValueError):
    """A file's content does not match the checksum it was written with."""


class UnverifiedFileWarning(UserWarning):
    """A file written before gradmask kept checksums: loaded, but not verified."""


class _WriteErrors:
    """A binary file that remembers the ``OSError`` its writes raised (a writer such as
    ``torch.save`` may replace it by its own error) and writes all it is given: a write interrupted
    by a signal (Slurm's preemption warning) may write part of it and say so, which ``torch.save``
    would take for a damaged file."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.error = f, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                written = self._f.write(view[done:])
                if not written:
                    raise OSError(errno.EIO, "a write made no progress")
                done += written
        except OSError as exc:
            self.error = exc
            raise
        return done

    def __getattr__(self, name):
        return getattr(self._f, name)


def write_atomic(path: Union[str, os.PathLike], content: Content) -> Path:
    """Write ``content`` (text as UTF-8, bytes, or ``fn(binary_file)`` such as
    ``lambda f: torch.save(obj, f)``) to a temporary file beside ``path``, fsync it, make it
    readable like an ordinary file (0644), then ``os.replace`` it over ``path``: a reader, or a kill
    mid-write, never sees a partial file. The temporary file is removed on failure, and ``path``
    keeps its previous content; a full disk raises ``OSError(ENOSPC)`` saying so and where.
    Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tracked = None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                tracked = _WriteErrors(f)
                content(tracked)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = tracked.error if tracked is not None and tracked.error is not None else exc
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            kept = "keeps its previous content" if path.exists() else "was not written"
            raise OSError(cause.errno, f"disk full while writing {path} (free space on {path.parent.resolve()}: "
                                       f"{_free_text(path.parent)}); {path.name} {kept}: free some space and "
                                       f"run the command again") from exc
        raise
    return path


def _free_text(folder: Path) -> str:
    try:
        import shutil
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB"
    except OSError:
        return "unknown"


def write_csv(path: Union[str, os.PathLike], header: list, rows) -> Path:
    """Write ``header`` and ``rows`` (sequences of cells, ``None`` as an empty cell) as CSV with
    ``\n`` line ends, through :func:`write_atomic`. Returns ``path``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return write_atomic(path, buf.getvalue())


_JSON_TYPES = {dict: "a JSON object", list: "a JSON array"}


def read_json(path: Union[str, os.PathLike], what: str, kind: type = dict) -> Any:
    """The JSON value of file ``path``, which must be of type ``kind`` (``dict``: an object); a
    file that is not valid JSON (truncated, damaged) or holds another type is a ``ValueError``
    naming ``what`` and the file. A missing file raises ``FileNotFoundError``."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is not a JSON text file (damaged? {exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid JSON (truncated or damaged: {exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno}); restore it or produce it again") from None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{what} {path} holds {type(value).__name__ if value is not None else 'null'} where "
                         f"{_JSON_TYPES.get(kind, kind.__name__)} was expected; restore it or produce it again")
    return value


# ----------------------------------------------------------------------------- checksums
def _feed(h, value: Any) -> None:
    """Hash ``value`` with its structure: every byte of every tensor, keys in order, types tagged."""
    import torch
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)};".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        h.update(f"D{len(value)};".encode())
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)};".encode())
        for v in value:
            _feed(h, v)
    elif isinstance(value, bool) or value is None:
        h.update(f"B{value!r};".encode())
    elif isinstance(value, int):
        h.update(f"I{value};".encode())
    elif isinstance(value, float):
        h.update(f"F{value.hex() if math.isfinite(value) else repr(value)};".encode())
    elif isinstance(value, str):
        data = value.encode("utf-8", errors="surrogatepass")
        h.update(f"S{len(data)};".encode())
        h.update(data)
    elif isinstance(value, (bytes, bytearray)):
        h.update(f"Y{len(value)};".encode())
        h.update(value)
    else:
        raise TypeError(f"cannot checksum a {type(value).__name__} (tensors, dicts, lists, numbers, str only)")


def digest(value: Any) -> str:
    """``"sha256:<hex>"`` of a nested value of tensors (dtype, shape and bytes), mappings (keys in
    order), lists / tuples, str, int, float, bool and None; the same after a ``torch.save`` /
    ``torch.load`` round trip (on any device), different after any change of a byte."""
    h = hashlib.sha256()
    _feed(h, value)
    return f"sha256:{h.hexdigest()}"


def json_digest(record: Any) -> str:
    """``"sha256:<hex>"`` of a JSON value (its canonical text, keys sorted)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"sha256:{hashlib.sha256(text.encode('ascii')).hexdigest()}"


def with_checksum(content: dict, fn: Callable[[Any], str] = digest) -> dict:
    """``content`` plus ``{CHECKSUM: fn(content)}`` (``content`` without any previous checksum)."""
    body = {k: v for k, v in content.items() if k != CHECKSUM}
    return {**body, CHECKSUM: fn(body)}


_UNVERIFIED_SAID: set[str] = set()  # files already reported as unverified (said once per process)


def warn_unverified(path: Union[str, os.PathLike], what: str, stacklevel: int = 3) -> None:
    """Say (once per file and process) that ``path`` has no checksum and was loaded unverified."""
    if str(path) not in _UNVERIFIED_SAID:
        _UNVERIFIED_SAID.add(str(path))
        warnings.warn(f"{what} {path} has no checksum (written by an older gradmask): loaded unverified",
                      UnverifiedFileWarning, stacklevel=stacklevel)


def verify(content: dict, path: Union[str, os.PathLike], what: str, fn: Callable[[Any], str] = digest,
           warn: bool = True) -> Optional[str]:
    """Check ``content`` (read from ``path``) against its stored checksum; returns it. A mismatch
    raises :class:`ChecksumError` naming the file; a file without one (written before gradmask kept
    checksums) is accepted with an :class:`UnverifiedFileWarning` (said once per file and process;
    ``warn=False``: not said, the caller tells of the None returned)."""
    stored = content.get(CHECKSUM)
    if stored is None:
        if warn:
            warn_unverified(path, what, stacklevel=4)
        return None
    actual = fn({k: v for k, v in content.items() if k != CHECKSUM})
    if not isinstance(stored, str) or actual != stored:
        raise ChecksumError(f"{what} {path} is damaged: its content does not match the checksum it was written "
                            f"with ({str(stored)[:19]}..., now {actual[:19]}...); it was changed after gradmask wrote "
                            f"it (a disk, copy or edit error). Restore it from a copy or produce it again")
    return stored


def read_record(path: Union[str, os.PathLike], what: str, warn: bool = True) -> tuple[dict, Optional[str]]:
    """``(content without its checksum, the checksum or None)`` of JSON record ``path`` (an object,
    :func:`json_digest` verified by :func:`verify`; ``warn``: as there). Not UTF-8, not JSON, not an
    object, or another content than its checksum's: ``ValueError`` naming the file."""
    record = read_json(path, what)  # an object, else a ValueError naming the file
    checksum = verify(record, path, what, json_digest, warn=warn)
    return {k: v for k, v in record.items() if k != CHECKSUM}, checksum


def write_record(path: Union[str, os.PathLike], content: dict) -> str:
    """Write ``content`` (JSON values) with its :func:`json_digest` as an indented JSON object
    through :func:`write_atomic`; returns the checksum."""
    checked = with_checksum(content, json_digest)
    write_atomic(path, json.dumps(checked, indent=2) + "\n")
    return checked[CHECKSUM]


class UnreadableFileError(ValueError):
    """A file torch cannot read, or one holding objects gradmask will not load; ``reason`` says
    which (the message names the file too)."""

    def __init__(self, what: str, path, reason: str) -> None:
        super().__init__(f"{what} {path} {reason}")
        self.reason = reason


def load_torch(path: Union[str, os.PathLike], what: str, map_location="cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors naming the file
    (:class:`UnreadableFileError`, a ``ValueError``): a file that is not one torch can read
    (corrupted or truncated), or that holds objects other than tensors and plain values (the safe
    loader refuses them; gradmask never loads such a file unsafely)."""
    import pickle
    import re

    import torch
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise UnreadableFileError(what, path, f"is corrupted or truncated and cannot be read ({exc})") from None
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a pickle / torch file at all, or damaged beyond its header
            raise UnreadableFileError(what, path, "is not a gradmask file, or is corrupted (its bytes are not a "
                                                  "file of tensors and plain values)") from None
        raise UnreadableFileError(what, path, f"is not a gradmask file or contains objects gradmask will not load "
                                              f"(it holds a {found.group(1)} object); gradmask reads only files of "
                                              f"tensors and plain values") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnreadableFileError(what, path, f"is corrupted or truncated and cannot be read "
                                              f"({type(exc).__name__}: {first})") from None
