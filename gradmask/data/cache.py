"""On-disk uint8 tensor cache for small decoded datasets.

A cache entry is ``<cache_dir>/<name>-<split>-<fingerprint>.pt`` holding a dict
``{"images": uint8 (N,3,H,W), "labels": int64 (N,), "classes": list[str],
"fingerprint": str, "format": int, "checksum": str}``.  The fingerprint (the cache key) hashes
the source's identity -- the resolved path, and for the archive or for every file of a directory
tree its size, mtime and a SHA-256 of its content (the whole content up to
:data:`ARCHIVE_WHOLE_LIMIT` / :data:`FILE_WHOLE_LIMIT`, else its first and last
:data:`SAMPLE_BYTES` and evenly spaced blocks between) -- plus the decode parameters, so a changed
source, even one replaced by a file of the same size and time, gets a new file name and is
rebuilt.  ``checksum`` (:func:`gradmask.util.files.digest` of the rest) is verified on every read.

Policy for a damaged entry (unreadable / truncated / wrong keys, shapes or
dtypes / fingerprint or checksum mismatch): warn naming the file and rebuild it.
Writes are atomic: temp file in the same directory, fsync, ``os.replace``.
If the cache directory is not writable the data are returned uncached with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from ..util.files import ChecksumError, UnreadableFileError, load_torch, verify, with_checksum, write_atomic
from .dataset import ImageDataset

__all__ = [
    "CACHE_ENV",
    "CACHE_FORMAT",
    "default_cache_dir",
    "fingerprint",
    "file_signature",
    "content_hash",
    "signatures_of",
    "cache_path",
    "load_cached",
    "save_cached",
    "cached",
]

CACHE_ENV = "GRADMASK_CACHE"
CACHE_FORMAT = 2  # 2: entries carry a checksum; the key includes the sources' content hashes
ARCHIVE_WHOLE_LIMIT = 512 << 20  # archives up to this size are hashed whole (about 0.6 s at most)
FILE_WHOLE_LIMIT = 256 << 10  # so are the files of a directory tree up to this size
SAMPLE_BYTES = 64 << 10  # larger ones: their first and last SAMPLE_BYTES and 30 blocks between
_SAMPLE_BLOCKS = 32


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$GRADMASK_CACHE``, else ``~/.cache/gradmask``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gradmask"


def content_hash(path: str | os.PathLike, whole_limit: int = ARCHIVE_WHOLE_LIMIT) -> str:
    """16 hex digits of the SHA-256 of a file's content: all of it up to ``whole_limit`` bytes,
    else :data:`SAMPLE_BYTES` blocks at its start, its end and evenly spaced between."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= whole_limit:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            for k in range(_SAMPLE_BLOCKS):
                f.seek(k * (size - SAMPLE_BYTES) // (_SAMPLE_BLOCKS - 1))
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


def file_signature(path: str | os.PathLike) -> tuple[str, int, int, str]:
    """(resolved path, size in bytes, mtime in ns, :func:`content_hash`) of one file."""
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), int(st.st_size), int(st.st_mtime_ns), content_hash(p))


def fingerprint(*parts: Any) -> str:
    """16-hex-digit SHA-256 of JSON-serialisable ``parts`` (signatures, parameters)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_FORMAT, *parts], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_") or "data"


def cache_path(name: str, split: str, fp: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_dir>/<name>-<split>-<fp>.pt`` (name/split sanitised for file names)."""
    return default_cache_dir(cache_dir) / f"{_safe(name)}-{_safe(split)}-{fp}.pt"


def _check_entry(obj: Any, fp: str) -> Optional[str]:
    """None if ``obj`` is a valid cache entry for fingerprint ``fp``, else what is wrong."""
    if not isinstance(obj, dict):
        return f"expected a dict, found {type(obj).__name__}"
    missing = {"images", "labels", "classes", "fingerprint", "format"} - set(obj)
    if missing:
        return f"missing keys {sorted(missing)}"
    if obj["format"] != CACHE_FORMAT:
        return f"format {obj['format']!r}, expected {CACHE_FORMAT}"
    if obj["fingerprint"] != fp:
        return f"fingerprint {obj['fingerprint']!r}, expected {fp!r}"
    cl = obj["classes"]
    if not isinstance(cl, list) or not all(isinstance(c, str) for c in cl):
        return "classes must be a list of str"
    try:
        ImageDataset(obj["images"], obj["labels"], cl)  # its checks: uint8 (N,3,H,W), int64 labels in range
    except ValueError as exc:
        return str(exc)
    return None


def load_cached(path: str | os.PathLike, fp: str) -> Optional[dict]:
    """The entry at ``path`` if present and valid; None if absent; None plus a warning
    naming the file if it is damaged (the caller then rebuilds it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = load_torch(path, "gradmask cache file")
    except UnreadableFileError as e:  # truncated zip, garbage bytes, refused objects, ...
        warnings.warn(f"gradmask cache file {path} is unreadable: it {e.reason}; rebuilding it", stacklevel=3)
        return None
    problem = _check_entry(obj, fp)
    if problem is not None:
        warnings.warn(f"gradmask cache file {path} is invalid ({problem}); rebuilding it", stacklevel=3)
        return None
    try:
        verify(obj, path, "gradmask cache file")
    except ChecksumError as e:
        warnings.warn(f"{e}; rebuilding it", stacklevel=3)
        return None
    return obj


def save_cached(path: str | os.PathLike, entry: dict) -> bool:
    """Atomically write ``entry`` to ``path``. Returns False (with a warning) if the
    directory cannot be written; never leaves a partial file at ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: torch.save(entry, f))
        return True
    except OSError as e:
        warnings.warn(f"could not write gradmask cache file {path} ({e}); continuing without cache", stacklevel=3)
        return False


def cached(
    name: str,
    split: str,
    fp: str,
    build: Callable[[], tuple[torch.Tensor, torch.Tensor, list[str]]],
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> tuple[tuple[torch.Tensor, torch.Tensor, list[str]], Path, bool]:
    """Return ``((images, labels, classes), cache_file, hit)``; ``build()`` runs only on a miss.

    images uint8 (N,3,H,W), labels int64 (N,).  With ``use_cache=False`` nothing is
    read or written.
    """
    path = cache_path(name, split, fp, cache_dir)
    if use_cache:
        entry = load_cached(path, fp)
        if entry is not None:
            return (entry["images"], entry["labels"], list(entry["classes"])), path, True
    images, labels, classes = build()
    entry = {
        "images": images.contiguous(),
        "labels": labels.contiguous(),
        "classes": list(classes),
        "fingerprint": fp,
        "format": CACHE_FORMAT,
    }
    problem = _check_entry(entry, fp)
    if problem is not None:  # a bug in the builder, not in the file
        raise ValueError(f"builder for {name}-{split} produced invalid data: {problem}")
    if use_cache:
        save_cached(path, with_checksum(entry))
    return (images, labels, list(classes)), path, False


def signatures_of(files: Iterable[str | os.PathLike], root: str | os.PathLike) -> list[tuple[str, int, int, str]]:
    """[(path relative to root, size, mtime_ns, :func:`content_hash`)] for the given files (order kept)."""
    root = Path(root)
    out = []
    for f in files:
        st = os.stat(f)
        out.append((os.path.relpath(f, root), int(st.st_size), int(st.st_mtime_ns),
                    content_hash(f, FILE_WHOLE_LIMIT)))
    return out

