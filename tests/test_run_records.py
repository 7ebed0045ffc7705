"""Run-record integrity (issue 26): a comparison's runs are those its manifest lists (stray copies
do not count as seeds), every record carries a checksum and agrees with the others and with the
checkpoint it describes, any single-byte change of a record is refused or harmless, the lock
follows no symlink, and the temporary files below a taken folder are removed."""
import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradmask.compare import compare, load_runs, write_report
from gradmask.compare.manifest import (
    MANIFEST,
    Manifest,
    ManifestRun,
    OlderComparisonWarning,
    UnlistedRunWarning,
    read_manifest,
    write_manifest,
)
from gradmask.compare.report import summarize_runs
from gradmask.compare.tuning import read_tuning
from gradmask.train import RunDir
from gradmask.train.checkpoint import save_checkpoint
from gradmask.train.records import read_run
from gradmask.train.rundir import LOCK, RunDirInUse, RunLock, lock_owner, take_folder
from gradmask.util.files import CHECKSUM, ChecksumError, json_digest, with_checksum

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


@dataclasses.dataclass
class FakeConfig:
    """The TrainConfig fields compare and its tuning use."""
    dataset: str = "synthetic"
    model: str = "resnet18_narrow"
    epochs: int = 2
    lr: float = 0.1
    mask: str = "none"
    seed: int = 0
    out: str = "x"
    resume: bool = False
    val_fraction: float = 0.0
    arm: Optional[str] = None


def write_run(path, config: dict, accs, finished=True, split="test") -> dict:
    """A run folder as the engine writes it (records with checksums, a checkpoint whose history is
    the metrics, final.json naming it); ``accs``: the accuracy after each epoch."""
    run = RunDir(path)
    run.write_config(config, "0.1.0", ["0.1.0"])
    history = []
    for e, a in enumerate(accs, 1):
        record = {"epoch": e, "train_loss": 2.0 - a, "train_acc": a, f"{split}_loss": 2.1 - a, f"{split}_acc": a,
                  f"{split}_top5": min(1.0, a + 0.2), "lr": 0.1, "epoch_seconds": 1.5, "images_per_second": 80.0,
                  "mask_kept": None if config["mask"] == "none" else {"layer1.0": 0.5},
                  "mask_energy_kept": None if config["mask"] == "none" else {"layer1.0": 0.75}}
        history.append(record)
        run.append_metrics(record)
    state = {"format": 1, "epoch": len(accs), "model": {"w": torch.full((3,), float(accs[-1]))}, "optimizer": {},
             "scheduler": {}, "rng": {}, "config": config, "model_args": {}, "history": history}
    checksum = save_checkpoint(run.checkpoint, state)
    last = history[-1]
    final = {f"{split}_acc": last[f"{split}_acc"], f"{split}_top5": last[f"{split}_top5"],
             f"{split}_loss": last[f"{split}_loss"], "epochs": len(accs), "train_seconds": 1.5 * len(accs),
             "device": "cpu", "model": config["model"], "mask": config["mask"], "seed": config["seed"],
             "num_params": 3, "trained_by": ["0.1.0"], "checkpoint": checksum}
    if finished:
        run.write_final(final)
    return final


ACC = {("none", 0): 0.70, ("none", 1): 0.74, ("lateral", 0): 0.60, ("lateral", 1): 0.64}


def fake_train(acc=ACC, val=lambda c: 0.5 + c.lr):
    """A train_fn writing current-format records (resume: a finished run returns its final.json)."""
    def train(config):
        run = RunDir(config.out)
        if run.finished:
            return run.read_final()
        split = "val" if config.val_fraction else "test"
        a = val(config) if split == "val" else acc[(config.mask, config.seed)]
        return write_run(config.out, dataclasses.asdict(config), [a / 2, a], split=split)
    return train


def make_comparison(out, tune=None) -> Path:
    compare(FakeConfig(), ("none", "lateral"), seeds=2, out=out, train_fn=fake_train(), log=None, tune=tune,
            tune_epochs=1 if tune else None)
    return Path(out)


def summary(out):
    """What a report shows: per variant the seeds, means and Δ interval."""
    return [(s.variant, [r.seed for r in s.finished], s.top1.mean, None if s.delta is None else tuple(s.delta))
            for s in summarize_runs(load_runs(out))]


# ---------------------------------------------------------------------------- 1. runs join by manifest
def test_stray_copies_of_a_run_do_not_count_as_seeds(tmp_path):
    """The probe: copies such as lateral-seed1.bak beside the real run left Table 1's numbers and
    seed counts changed; now they are ignored with a warning naming them."""
    out = make_comparison(tmp_path / "cmp")
    before = summary(out)
    assert [(v, seeds) for v, seeds, *_ in before] == [("none", [0, 1]), ("lateral", [0, 1])]
    for copy in ("lateral-seed1.bak", "lateral-seed1.bak2", "lateral-seed0 (copy)"):
        shutil.copytree(out / "lateral-seed1", out / copy)
    with pytest.warns(UnlistedRunWarning, match=r"lateral-seed0 \(copy\), lateral-seed1\.bak, lateral-seed1\.bak2"):
        after = summary(out)
    assert after == before
    with pytest.warns(UnlistedRunWarning):
        write_report(out)
    results = json.loads((out / "results.json").read_text())
    assert [s["seeds"] for s in results["summary"]] == [[0, 1], [0, 1]]
    assert len(results["runs"]) == 4


def test_compare_records_its_runs_and_their_results_in_the_manifest(tmp_path):
    out = make_comparison(tmp_path / "cmp", tune={"lr": [0.05, 0.2]})
    manifest = read_manifest(out)
    assert [(r.variant, r.seed, r.folder) for r in manifest.runs] == [
        ("none", 0, "none-seed0"), ("lateral", 0, "lateral-seed0"), ("none", 1, "none-seed1"),
        ("lateral", 1, "lateral-seed1")]
    for r in manifest.runs:
        assert r.final == json.loads((out / r.folder / "final.json").read_text())[CHECKSUM]
    assert manifest.tuning == json.loads((out / "tuning.json").read_text())[CHECKSUM]
    # more seeds later: the manifest keeps the earlier runs and adds the new ones
    compare(FakeConfig(), ("none", "lateral"), seeds=1, seed_offset=2, out=out,
            train_fn=fake_train({**ACC, ("none", 2): 0.7, ("lateral", 2): 0.6}), log=None,
            tune={"lr": [0.05, 0.2]}, tune_epochs=1)
    assert [(r.variant, r.seed) for r in read_manifest(out).runs][-2:] == [("none", 2), ("lateral", 2)]
    assert [seeds for _, seeds, *_ in summary(out)] == [[0, 1, 2], [0, 1, 2]]


def test_a_comparison_written_before_manifests_loads_with_one_warning(tmp_path):
    out = make_comparison(tmp_path / "cmp")
    expected = summary(out)
    (out / MANIFEST).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert summary(out) == expected
        assert summary(out) == expected          # said once per comparison
    said = [w for w in caught if issubclass(w.category, OlderComparisonWarning)]
    assert len(said) == 1 and "no manifest.json" in str(said[0].message)
    # there, two folders of one (variant, seed) are an error naming both
    shutil.copytree(out / "lateral-seed1", out / "lateral-seed1.bak")
    with pytest.raises(ValueError, match=r"two runs of lateral seed 1: lateral-seed1 and lateral-seed1\.bak"):
        load_runs(out)


def test_a_manifest_listing_one_arm_and_seed_twice_is_an_error_naming_both(tmp_path):
    out = make_comparison(tmp_path / "cmp")
    runs = read_manifest(out).runs
    write_manifest(out, Manifest(runs + [ManifestRun("lateral", 1, "lateral-seed1.bak")]))
    with pytest.raises(ValueError, match=r"lists lateral seed 1 twice: folders lateral-seed1 and lateral-seed1\.bak"):
        load_runs(out)


def test_a_run_in_another_runs_folder_is_refused(tmp_path):
    out = make_comparison(tmp_path / "cmp")
    shutil.rmtree(out / "lateral-seed0")
    shutil.copytree(out / "lateral-seed1", out / "lateral-seed0")
    with pytest.raises(ValueError, match=r"lateral-seed0 holds lateral seed 1, but .* lists it as lateral seed 0"):
        load_runs(out)


def test_a_result_the_manifest_did_not_record_is_refused(tmp_path):
    out = make_comparison(tmp_path / "cmp")
    shutil.rmtree(out / "none-seed0")           # trained again outside compare: another (valid) result
    write_run(out / "none-seed0", dataclasses.asdict(FakeConfig(mask="none", seed=0, out=str(out / "none-seed0"))),
              [0.3, 0.99])
    with pytest.raises(ValueError, match=r"none-seed0/final.json is not the one the comparison's manifest"):
        load_runs(out)
    # compare records it when run again (the run is finished: nothing trains)
    make_comparison(out)
    assert summary(out)[0][2] == pytest.approx(100 * (0.99 + 0.74) / 2)


# ---------------------------------------------------------------------------- 2. checksummed records
def _flip_digit(path: Path, key: str) -> None:
    """Change the first digit of ``key``'s value in JSON file ``path`` (as the probe did: 7.81 -> 47.81)."""
    text = path.read_text()
    at = text.index(f'"{key}": ') + len(key) + 4
    digit = next(i for i in range(at, len(text)) if text[i].isdigit() and text[i] != "0")
    path.write_text(text[:digit] + str((int(text[digit]) + 4) % 10 or 1) + text[digit + 1:])


def test_a_flipped_digit_in_final_json_is_refused_naming_the_file(tmp_path):
    out = make_comparison(tmp_path / "cmp")
    final = out / "lateral-seed0" / "final.json"
    _flip_digit(final, "test_acc")
    with pytest.raises(ChecksumError, match=rf"{final}.*is damaged"):
        load_runs(out)


def test_final_json_written_before_checksums_is_still_checked_against_the_metrics(tmp_path):
    out = make_comparison(tmp_path / "cmp")
    for path in [out / MANIFEST] + sorted(out.glob("*/*.json")) + sorted(out.glob("*/metrics.jsonl")):
        _strip_checksums(path)                       # an older gradmask's comparison
    (out / "lateral-seed0" / "checkpoint.pt").unlink()
    _flip_digit(out / "lateral-seed0" / "final.json", "test_acc")
    with pytest.raises(ValueError, match=r"lateral-seed0/final.json does not match the run's metrics.*test_acc"):
        load_runs(out)


def _strip_checksums(path: Path) -> None:
    if path.name == "metrics.jsonl":
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != CHECKSUM}) + "\n" for r in lines))
    elif path.name == MANIFEST:
        path.unlink()
    else:
        record = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in record.items() if k != CHECKSUM}, indent=2))


def _rewrite(path: Path, change) -> None:
    """Rewrite a record with a valid checksum after ``change(record)`` (a forger, or a file of another run)."""
    record = {k: v for k, v in json.loads(path.read_text()).items() if k != CHECKSUM}
    change(record)
    path.write_text(json.dumps(with_checksum(record, json_digest), indent=2))


def test_records_are_checked_against_each_other_and_the_checkpoint(tmp_path):
    out = make_comparison(tmp_path / "cmp")
    run = out / "lateral-seed1"
    _rewrite(run / "final.json", lambda r: r.update(test_acc=0.99))
    with pytest.raises(ValueError, match=r"final.json does not match the run's metrics.*test_acc 0.99"):
        read_run(run)
    # final.json and metrics.jsonl changed alike: the checkpoint's history tells
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lines[-1] = with_checksum({**{k: v for k, v in lines[-1].items() if k != CHECKSUM}, "test_acc": 0.99}, json_digest)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ValueError, match=r"metrics.jsonl differ from the history in .*checkpoint.pt"):
        read_run(run)
    # a final.json naming another checkpoint (here another run's)
    other = json.loads((out / "lateral-seed0" / "final.json").read_text())["checkpoint"]
    _rewrite(out / "none-seed0" / "final.json", lambda r: r.update(checkpoint=other))
    with pytest.raises(ValueError, match=r"none-seed0/final.json describes another checkpoint"):
        read_run(out / "none-seed0")


def test_a_record_without_checksum_in_a_checksummed_run_is_refused(tmp_path):
    out = make_comparison(tmp_path / "cmp")
    _strip_checksums(out / "none-seed1" / "final.json")
    with pytest.raises(ValueError, match=r"none-seed1 is damaged: final.json has no checksum while its config.json"):
        load_runs(out)


def test_an_edited_tuning_json_is_refused_naming_the_file(tmp_path):
    out = make_comparison(tmp_path / "cmp", tune={"lr": [0.05, 0.2]})
    assert read_tuning(out)["variants"]["none"]["chosen"] == {"lr": 0.2}
    path = out / "tuning.json"
    original = path.read_text()
    path.write_text(original.replace('"lr": 0.2', '"lr": 0.05'))
    with pytest.raises(ChecksumError, match=rf"{path}"):
        write_report(out)
    # a valid checksum, but not the tuning.json the manifest recorded
    path.write_text(original)
    _rewrite(path, lambda r: r["variants"]["none"].update(chosen={"lr": 0.05}))
    with pytest.raises(ValueError, match=rf"{path} is not the one the comparison's manifest"):
        write_report(out)
    # without the manifest to tell: the runs were not trained at the lr it names
    (out / MANIFEST).unlink()
    with pytest.raises(ValueError, match=r"says none was trained at lr=0.05, but its run none-seed0 was trained at "
                                         r"lr=0.2"):
        load_runs(out)


def test_metrics_lines_are_verified_one_by_one(tmp_path):
    out = make_comparison(tmp_path / "cmp")
    path = out / "none-seed0" / "metrics.jsonl"
    text = path.read_text()
    # a last line cut short (a run killed mid-write) is skipped
    RunDir(out / "cut").write_config({"mask": "none", "seed": 5}, "0.1.0")
    (out / "cut" / "metrics.jsonl").write_text(text[:-40])
    assert [r["epoch"] for r in read_run(out / "cut").metrics] == [1]
    # a damaged complete last line is not (its newline is there, or a whole record is followed by junk)
    for damaged in (text[:-3] + "x}\n", text[:-1] + "x"):
        path.write_text(damaged)
        with pytest.raises(ValueError, match=rf"{path}, line 2"):
            read_run(out / "none-seed0")


# ---------------------------------------------------------------------------- property: single bytes
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tuned comparison of current records, and what its report reads."""
    out = make_comparison(tmp_path_factory.mktemp("records") / "cmp", tune={"lr": [0.05, 0.2]})
    files = [out / MANIFEST, out / "tuning.json"] + [out / "lateral-seed1" / name for name in
                                                     ("config.json", "metrics.jsonl", "final.json")]
    return out, files, _read_all(out)


def _read_all(out):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = load_runs(out)
        return [(r.name, r.variant, r.seed, r.config, r.metrics, r.final) for r in runs], read_tuning(out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 4), where=st.floats(0, 1, exclude_max=True), byte=st.integers(0, 255))
def test_any_single_byte_change_in_a_record_is_refused_or_harmless(pristine, which, where, byte):
    out, files, expected = pristine
    path = files[which]
    original = path.read_bytes()
    at = int(where * len(original))
    if original[at] == byte:
        return
    path.write_bytes(original[:at] + bytes([byte]) + original[at + 1:])
    try:
        try:
            got = _read_all(out)
        except ValueError as exc:          # refused, naming the file (or its run folder and name)
            message = str(exc)
            assert str(path) in message or (str(path.parent) in message and path.name in message), message
        else:                              # or harmless: the report reads the same records
            assert got == expected, (path.name, at, byte)
    finally:
        path.write_bytes(original)


def test_whitespace_outside_values_is_harmless(pristine):
    out, files, expected = pristine
    path = files[4]                                  # final.json
    original = path.read_text()
    try:
        path.write_text(original.replace("\n  ", "\n\t"))
        assert _read_all(out) == expected
    finally:
        path.write_text(original)


# ---------------------------------------------------------------------------- 6. the lock
def test_the_lock_follows_no_symlink(tmp_path):
    folder, target = tmp_path / "run", tmp_path / "elsewhere.txt"
    folder.mkdir()
    os.symlink(target, folder / LOCK)                # a lock planted to point elsewhere: not created
    with pytest.raises(ValueError, match=r"is a symbolic link; gradmask does not follow it.*delete"):
        RunDir(folder).lock()
    assert not target.exists()
    target.write_text("precious\n")                  # nor truncated when it exists
    with pytest.raises(ValueError, match="symbolic link"):
        take_folder(folder)
    assert target.read_text() == "precious\n"
    assert lock_owner(folder) is None                # nor read through
    (folder / LOCK).unlink()
    os.link(target, folder / LOCK)                   # a hard link to another file: refused, not truncated
    with pytest.raises(ValueError, match="hard links"):
        RunLock.acquire(folder)
    assert target.read_text() == "precious\n"
    (folder / LOCK).unlink()
    RunLock.acquire(folder).release()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_lock_of_another_user_is_not_taken_over(tmp_path):
    (tmp_path / LOCK).write_text("")
    os.chown(tmp_path / LOCK, 12345, 12345)
    with pytest.raises(ValueError, match=r"belongs to another user \(uid 12345\)"):
        RunLock.acquire(tmp_path)


def test_train_refuses_a_planted_lock_symlink(tmp_path):
    from gradmask.train import TrainConfig, train
    folder, target = tmp_path / "run", tmp_path / "target"
    folder.mkdir()
    os.symlink(target, folder / LOCK)
    with pytest.raises(ValueError, match="symbolic link"):
        train(TrainConfig(train_limit=16, test_limit=16, synthetic_train=16, synthetic_test=16, epochs=1,
                          batch_size=16, progress=False, out=str(folder)))
    assert not target.exists()


# ---------------------------------------------------------------------------- 7. temp files, compare's lock
def test_temporary_files_anywhere_below_a_taken_folder_are_removed(tmp_path, capsys):
    out = tmp_path / "out"
    partial = [out / "steps" / ".train-synthetic.json.k2j3.tmp", out / ".report.html.x9.tmp",
               out / "synthetic" / "runs" / ".report.md.a1.tmp", out / "synthetic" / "runs" / "none-seed0" /
               ".checkpoint.pt.zz.tmp"]
    kept = [out / "notes.tmp", out / "steps" / "train-synthetic.json"]
    for p in partial + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\0" * 100)
    busy = RunLock.acquire(out / "busy")             # a run another job trains now: its files are its own
    (out / "busy" / ".checkpoint.pt.b1.tmp").write_bytes(b"\0")
    try:
        take_folder(out).release()
        assert not any(p.exists() for p in partial) and all(p.exists() for p in kept)
        assert (out / "busy" / ".checkpoint.pt.b1.tmp").exists()
        assert "removed partial temporary files" in capsys.readouterr().err
    finally:
        busy.release()


def test_compare_takes_its_folder(tmp_path):
    out = tmp_path / "cmp"
    held = RunLock.acquire(out)                      # as another compare on this folder holds it
    try:
        with pytest.raises(RunDirInUse, match="in use by pid"):
            make_comparison(out)
    finally:
        held.release()
    assert not (out / MANIFEST).exists()
    (out / ".report.html.q1w2.tmp").write_text("<html")  # a report write cut short
    make_comparison(out)
    assert not (out / ".report.html.q1w2.tmp").exists() and not (out / LOCK).exists()
    from gradmask.cli import main
    held = RunLock.acquire(out)
    try:                                             # --report-only takes it too
        assert main(["compare", "--report-only", "--out", str(out)]) == 2
    finally:
        held.release()


# ---------------------------------------------------------------------------- published results
def _published_comparisons():
    return sorted({p.parent.parent for p in RESULTS.rglob("config.json") if (p.parent / "final.json").is_file()
                   and (p.parent.parent / "results.json").is_file()})


@pytest.mark.parametrize("folder", _published_comparisons(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_published_comparisons_still_load_with_one_warning(folder, tmp_path):
    """docs/results holds records of older gradmasks (no manifest, no checksums, no checkpoints):
    they load with one warning per comparison and give the published numbers; comparisons published
    with their manifest and checksums load without one."""
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_runs(copy)
        load_runs(copy)
    assert [str(w.message) for w in caught if not issubclass(w.category, OlderComparisonWarning)] == []
    older = not (folder / "manifest.json").is_file()
    assert len([w for w in caught if issubclass(w.category, OlderComparisonWarning)]) == int(older)
    published = json.loads((folder / "results.json").read_text())
    assert sorted((r["variant"], r["seed"], r["test_acc"]) for r in published["runs"]) == \
        sorted((r.variant, r.seed, r.value("test_acc")) for r in runs)


def test_a_published_reproduce_report_re_renders_with_one_warning_per_comparison(tmp_path):
    from gradmask.reproduce import write_report as write_reproduce_report
    published = RESULTS / "2026-11-30-quick"
    copy = tmp_path / "quick"
    shutil.copytree(published, copy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_reproduce_report(copy)
    assert [str(w.message) for w in caught if not issubclass(w.category, OlderComparisonWarning)] == []
    assert sorted(str(w.message).split()[1] for w in caught) == [str(copy / "synthetic" / "li-blur"),
                                                                 str(copy / "synthetic" / "runs")]
    for key in ("table1", "table2"):  # every published number is re-rendered unchanged (newer reports add some)
        now = json.loads((copy / "results.json").read_text())["sections"][key]["numbers"]
        before = json.loads((published / "results.json").read_text())["sections"][key]["numbers"]
        for name, numbers in before.items():
            assert {k: now[name][k] for k in numbers} == numbers if isinstance(numbers, dict) else \
                now[name] == numbers, (key, name)


def test_the_reproduce_report_counts_only_the_runs_of_each_comparison(tmp_path):
    from gradmask.reproduce.report import training_code
    out = make_comparison(tmp_path / "cmp")
    shutil.copytree(out / "lateral-seed1", out / "lateral-seed1.bak")
    assert training_code(tmp_path) == "0.1.0 (4 runs)"


def test_a_trained_run_verifies_against_its_checkpoint(tmp_path):
    from gradmask.train import TrainConfig, read_checkpoint, train
    out = tmp_path / "run"
    train(TrainConfig(train_limit=16, test_limit=16, synthetic_train=16, synthetic_test=16, epochs=2, batch_size=16,
                      progress=False, out=str(out)))
    records = read_run(out)
    assert records.final["checkpoint"] == read_checkpoint(out)["checksum"] and records.unverified == []
    assert [r["epoch"] for r in records.metrics] == [1, 2]
    _flip_digit(out / "metrics.jsonl", "test_loss")
    with pytest.raises(ChecksumError, match=rf"{out / 'metrics.jsonl'}, line 1, is damaged"):
        read_run(out)
