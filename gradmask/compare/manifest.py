"""Which runs make up a comparison: ``manifest.json`` in the comparison folder, written by
:func:`gradmask.compare.compare` (and so by ``reproduce``), read by the reports.

``{"format": 1, "runs": [{"variant", "seed", "folder", "final"}, ...], "tuning", "checksum"}``:
one entry per run, keyed by its variant (the arm's name: ``config.arm``, else its mask mode) and
seed; ``folder`` is the run's folder name inside the comparison folder; ``final`` the checksum of
its ``final.json`` once compare saw it finished (None before); ``tuning`` the checksum of the
comparison's ``tuning.json`` (None: not tuned, or tuned by an older gradmask); ``checksum`` that of
the manifest itself (:func:`gradmask.util.files.json_digest`; a manifest without one is refused).

A report reads the runs the manifest lists, not every folder it finds: another folder holding a
run (a copy such as ``lateral-seed1.bak``) is ignored with an :class:`UnlistedRunWarning`. A
comparison written before manifests existed is read by its folders (:func:`older_comparison` says
so once); there, two folders of one (variant, seed) are an error naming both.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Optional

from ..util.files import UnverifiedFileWarning, read_record, write_record

MANIFEST = "manifest.json"
FORMAT = 1


class UnlistedRunWarning(UserWarning):
    """A folder holding a run that the comparison's manifest does not list: left out of the report."""


class OlderComparisonWarning(UnverifiedFileWarning):
    """A comparison written by an older gradmask (no manifest, or records without checksums):
    read, but not verified."""


@dataclass(frozen=True)
class ManifestRun:
    """One run of a comparison: its ``variant`` and ``seed``, its ``folder`` (name inside the
    comparison folder) and ``final`` (checksum of its ``final.json``; None: not seen finished)."""
    variant: str
    seed: int
    folder: str
    final: Optional[str] = None

    @property
    def key(self) -> tuple[str, int]:
        return self.variant, self.seed


@dataclass
class Manifest:
    """The runs of a comparison (in training order) and the checksum of its ``tuning.json``."""
    runs: list[ManifestRun] = field(default_factory=list)
    tuning: Optional[str] = None

    def to_json(self) -> dict:
        return {"format": FORMAT, "runs": [{"variant": r.variant, "seed": r.seed, "folder": r.folder,
                                            "final": r.final} for r in self.runs], "tuning": self.tuning}

    def entry(self, variant: str, seed: int) -> Optional[ManifestRun]:
        return next((r for r in self.runs if r.key == (variant, seed)), None)

    def with_run(self, run: ManifestRun) -> "Manifest":
        """This manifest with ``run`` in place of the entry of its (variant, seed), or added last."""
        runs = [run if r.key == run.key else r for r in self.runs]
        return Manifest(runs if run.key in {r.key for r in self.runs} else runs + [run], self.tuning)


def _plain_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def read_manifest(out) -> Optional[Manifest]:
    """The manifest of comparison folder ``out`` (verified), or None when it has none (written
    before manifests). A damaged, unchecksummed or malformed manifest, or one listing a (variant,
    seed) twice, raises ``ValueError`` naming the file (and both folders)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    content, checksum = read_record(path, "comparison manifest", warn=False)
    if checksum is None:
        raise ValueError(f"comparison manifest {path} has no checksum (every gradmask that writes manifests "
                         f"checksums them): it was edited; delete it to read the comparison by its folders")
    runs = content.get("runs")
    if content.get("format") != FORMAT or not isinstance(runs, list):
        raise ValueError(f"comparison manifest {path} is not a format-{FORMAT} gradmask manifest")
    entries: list[ManifestRun] = []
    for i, r in enumerate(runs):
        ok = isinstance(r, dict) and isinstance(r.get("variant"), str) and _plain_name(r.get("folder")) \
            and isinstance(r.get("seed"), int) and not isinstance(r.get("seed"), bool) \
            and (r.get("final") is None or isinstance(r.get("final"), str))
        if not ok:
            raise ValueError(f"comparison manifest {path}: run {i + 1} is not an object with a variant, an integer "
                             f"seed, a plain folder name and a final checksum or null")
        entry = ManifestRun(r["variant"], r["seed"], r["folder"], r.get("final"))
        twin = next((e for e in entries if e.key == entry.key or e.folder == entry.folder), None)
        if twin is not None:
            raise ValueError(f"comparison manifest {path} lists {entry.variant} seed {entry.seed} twice: folders "
                             f"{twin.folder} and {entry.folder}" if twin.key == entry.key else
                             f"comparison manifest {path} lists folder {entry.folder} twice")
        entries.append(entry)
    tuning = content.get("tuning")
    if tuning is not None and not isinstance(tuning, str):
        raise ValueError(f"comparison manifest {path}: tuning must be a checksum or null")
    return Manifest(entries, tuning)


def write_manifest(out, manifest: Manifest) -> Path:
    """Store ``manifest`` in ``out`` (atomically, with its checksum)."""
    path = Path(out) / MANIFEST
    write_record(path, manifest.to_json())
    return path


def record_runs(out, runs: Iterable[tuple[str, int, str]], retrained: Iterable[str] = ()) -> Manifest:
    """Add ``runs`` (``(variant, seed, run folder)``, the folder inside ``out``) to the manifest
    of ``out`` (created if needed); entries already there keep their ``final`` checksum unless
    their folder is in ``retrained``. Returns the manifest written."""
    manifest = read_manifest(out) or Manifest()
    retrained = {Path(p).name for p in retrained}
    for variant, seed, path in runs:
        name = Path(path).name
        old = manifest.entry(variant, seed)
        final = old.final if old is not None and old.folder == name and name not in retrained else None
        manifest = manifest.with_run(ManifestRun(variant, seed, name, final))
    write_manifest(out, manifest)
    return manifest


def record_finals(out, finals: dict[tuple[str, int], Optional[str]], tuning: Optional[str]) -> Manifest:
    """Set the ``final`` checksum of the runs ``finals`` names (``{(variant, seed): checksum}``)
    and the ``tuning`` checksum (None: keep the manifest's) in the manifest of ``out``."""
    manifest = read_manifest(out) or Manifest()
    runs = [replace(r, final=finals.get(r.key, r.final)) for r in manifest.runs]
    manifest = Manifest(runs, manifest.tuning if tuning is None else tuning)
    write_manifest(out, manifest)
    return manifest


_SAID: set[str] = set()  # comparison folders already warned about (once per process)


def older_comparison(out, why: str) -> None:
    """Warn (once per comparison folder and process) that ``out`` holds records of an older
    gradmask, read unverified: ``why`` says which."""
    key = str(Path(out).resolve())
    if key not in _SAID:
        _SAID.add(key)
        warnings.warn(f"comparison {out} was written by an older gradmask ({why}): read unverified",
                      OlderComparisonWarning, stacklevel=3)


__all__ = ["FORMAT", "MANIFEST", "Manifest", "ManifestRun", "OlderComparisonWarning", "UnlistedRunWarning",
           "older_comparison", "read_manifest", "record_finals", "record_runs", "write_manifest"]
