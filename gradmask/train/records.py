"""The run records a report trusts, checked: ``config.json``, ``final.json`` and every line of
``metrics.jsonl`` carry their own checksum (:func:`gradmask.util.files.json_digest` of the record under
``"checksum"``), and :func:`read_run` checks a run's records against each other and against the
checkpoint they describe.

What :func:`read_run` refuses (``ValueError`` naming the file): a record that is not UTF-8 JSON of
the expected shape or whose content does not match its checksum; a record without a checksum in a
run whose other records have one (a checksum removed, or a file of another run put in); a
``final.json`` whose accuracies / epochs are not those of the last ``metrics.jsonl`` record; and,
when the run's ``checkpoint.pt`` is there, a ``final.json`` naming another checkpoint checksum, or
``metrics.jsonl`` records other than the checkpoint's history. A run written before checksums (no
record has one) is read unverified: :attr:`RunRecords.unverified` names its files for the caller
to warn once.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..util.files import CHECKSUM, json_digest, read_record, verify, warn_unverified, with_checksum
from .checkpoint import CHECKPOINT, checkpoint_summary

CONFIG = "config.json"
METRICS_JSONL = "metrics.jsonl"
FINAL = "final.json"
# final.json keys copied from the last epoch's record (test_* or, with a validation split, val_*)
_FROM_LAST_EPOCH = ("test_acc", "test_top5", "test_loss", "val_acc", "val_top5", "val_loss")


def json_value(v):
    """``v`` for JSON: None for a non-finite float (JSON has no NaN / inf)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def json_record(record: dict) -> dict:
    """``record`` as its JSON text reads back (non-finite floats as None, tuples as lists)."""
    return json.loads(json.dumps({k: json_value(v) for k, v in record.items()}))


def metrics_line(record: dict) -> str:
    """One ``metrics.jsonl`` line: the record's JSON with its checksum, and a newline."""
    return json.dumps(with_checksum(json_record(record), json_digest)) + "\n"


def read_metrics(path: Path, warn: bool = True) -> tuple[list[dict], int]:
    """``(records in epoch order without their checksums, lines without a checksum)`` of
    ``metrics.jsonl`` at ``path`` (``([], 0)`` without the file). A last line with no newline that
    does not parse is a write cut short (a run killed, or writing now) and is skipped; any other
    line that is not a JSON object with an ``epoch``, or whose checksum does not match, raises
    ``ValueError`` naming the file and line, as does a file where some lines have a checksum and
    others not. A repeated epoch (a resumed run) counts once, its last record. ``warn``: a file
    without checksums warns once (else the caller tells of the count returned)."""
    if not path.is_file():
        return [], 0
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"run metrics {path} is damaged: it is not UTF-8 text (byte {exc.start})") from None
    lines = text.split("\n")  # the last item: "" after a complete last line, else a cut-short write
    by_epoch: dict[int, dict] = {}
    checked = unchecked = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not _complete_json_prefix(line):
                break
            raise ValueError(f"run metrics {path}, line {i + 1} is damaged: not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int) or isinstance(row["epoch"], bool):
            raise ValueError(f"run metrics {path}, line {i + 1}: expected an object with an integer 'epoch'")
        if verify(row, f"{path}, line {i + 1},", "run metrics", json_digest, warn=False) is None:
            unchecked += 1
        else:
            checked += 1
        by_epoch[row["epoch"]] = {k: v for k, v in row.items() if k != CHECKSUM}
    if checked and unchecked:
        raise ValueError(f"run metrics {path} is damaged: {unchecked} of its {checked + unchecked} lines have no "
                         f"checksum (one was edited or lines of another file were put in)")
    if unchecked and warn:
        warn_unverified(path, "run metrics")
    return [by_epoch[e] for e in sorted(by_epoch)], unchecked


def _complete_json_prefix(line: str) -> bool:
    """Whether ``line`` starts with a whole JSON value followed by other text: not a write cut
    short (whose text is a prefix of a valid line), but a damaged line."""
    try:
        json.JSONDecoder().raw_decode(line)
    except json.JSONDecodeError:
        return False
    return True


def read_config(path: Path, warn: bool = True) -> tuple[dict, Optional[str]]:
    """``(config.json's content without its checksum, its checksum or None)``, verified."""
    return read_record(path, "run config", warn)


def read_final(path: Path, warn: bool = True) -> tuple[dict, Optional[str]]:
    """``(final.json's content without its checksum, its checksum or None)``, verified."""
    return read_record(path, "run result", warn)


@dataclass
class RunRecords:
    """A run folder's records, checked (:func:`read_run`): ``config`` and ``final`` (None: not
    finished) without their checksums, ``metrics`` in epoch order, ``final_checksum`` (None: not
    finished or unverified) and ``unverified``: the files written before checksums (then all of them)."""
    path: Path
    config: dict
    metrics: list[dict]
    final: Optional[dict]
    final_checksum: Optional[str]
    unverified: list[str] = field(default_factory=list)


def read_run(folder, warn: bool = True) -> RunRecords:
    """The records of run folder ``folder`` (one holding ``config.json``), each verified and checked
    against the others and against the checkpoint (see the module's docstring). ``warn=False``:
    files without checksums are not warned about, only listed in ``unverified``."""
    folder = Path(folder)
    config, config_sum = read_config(folder / CONFIG, warn=False)
    metrics, unchecked = read_metrics(folder / METRICS_JSONL, warn=False)
    final, final_sum = read_final(folder / FINAL, warn=False) if (folder / FINAL).is_file() else (None, None)
    unverified = ([CONFIG] if config_sum is None else []) + ([METRICS_JSONL] if unchecked else []) \
        + ([FINAL] if final is not None and final_sum is None else [])
    verified = ([CONFIG] if config_sum is not None else []) + ([METRICS_JSONL] if metrics and not unchecked else []) \
        + ([FINAL] if final_sum is not None else [])
    if verified and unverified:
        raise ValueError(f"run {folder} is damaged: {', '.join(unverified)} {_has(unverified)} no checksum while "
                         f"its {', '.join(verified)} {_has(verified)} one "
                         f"(a checksum was removed, or a file of another run put in); restore the run or train it "
                         f"again")
    if final is not None:
        _check_final(folder, final, metrics)
        checkpoint = folder / CHECKPOINT
        if checkpoint.is_file():
            _check_checkpoint(folder, final, metrics, *checkpoint_summary(checkpoint))
    if unverified and warn:
        for name in unverified:
            warn_unverified(folder / name, "run record")
    return RunRecords(folder, config, metrics, final, final_sum, unverified)


def _has(names: list) -> str:
    return "has" if len(names) == 1 else "have"


def _check_final(folder: Path, final: dict, metrics: list[dict]) -> None:
    """``final.json`` holds the last epoch's figures and epoch count."""
    if not metrics:
        raise ValueError(f"run result {folder / FINAL} describes a finished run, but {folder / METRICS_JSONL} has no "
                         f"epoch: the records do not belong together")
    last = metrics[-1]
    differ = [f"{k} {final[k]!r} (last epoch: {last.get(k)!r})" for k in _FROM_LAST_EPOCH
              if k in final and final[k] != last.get(k)]
    if "epochs" in final and final["epochs"] != last["epoch"]:
        differ.append(f"epochs {final['epochs']!r} (last epoch: {last['epoch']!r})")
    if differ:
        raise ValueError(f"run result {folder / FINAL} does not match the run's metrics ({folder / METRICS_JSONL}): "
                         f"{'; '.join(differ)}; one of them was changed after training")


def _check_checkpoint(folder: Path, final: dict, metrics: list[dict], checksum: Optional[str],
                      history: list[dict]) -> None:
    """A finished run's records describe its checkpoint: the checksum ``final.json`` names, and
    ``metrics.jsonl`` equal to the checkpoint's history."""
    checkpoint = folder / CHECKPOINT
    named = final.get("checkpoint")
    if named is not None and checksum is not None and named != checksum:
        raise ValueError(f"run result {folder / FINAL} describes another checkpoint than {checkpoint} (it names "
                         f"{str(named)[:19]}..., the checkpoint is {checksum[:19]}...): the run was trained again "
                         f"or files of different runs were put together")
    if [json_record(r) for r in history] != metrics:
        raise ValueError(f"run metrics {folder / METRICS_JSONL} differ from the history in {checkpoint} (the "
                         f"epochs the checkpoint was trained through): one of them was changed after training")


__all__ = ["CONFIG", "FINAL", "METRICS_JSONL", "RunRecords", "json_record", "json_value", "metrics_line",
           "read_config", "read_final", "read_metrics", "read_run"]
