"""``train(config, callbacks=())``: the training loop of every experiment.

One function for one process or many (``torchrun``): seed, data on the device, model (+ the
gradient mask hooks, channels_last, torch.compile, DistributedDataParallel), SGD with a per-step
lr schedule, autocast, a progress bar per epoch, evaluation, the run directory
(:mod:`gradmask.train.rundir`) and an atomic checkpoint every epoch from which ``resume=True``
continues bit-identically (on CPU).

Callbacks: objects with any of ``on_train_start(ctx)``, ``on_epoch_end(ctx, record)``,
``on_train_end(ctx, final)``, or plain callables ``cb(ctx, record)`` (= ``on_epoch_end``).
``ctx`` is the :class:`TrainContext` (model, optimiser, data, mask handle, ...); ``record`` the
epoch's metrics dict before it is written: a callback may add keys (numbers, or JSON values),
which go to ``metrics.jsonl`` (and, if scalar, to ``metrics.csv``). Every process calls them;
``ctx.is_main`` tells the one that writes files.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..hooks import MaskHandle, attach
from ..mask import GradientMask
from ..util.device import resolve_device
from ..util.metric_names import logged_scalars
from ..util.progress import counted
from .augment import build_augment
from .checkpoint import FORMAT, build_model, load_model_state, save_checkpoint
from .config import RESUME_FREE_FIELDS, TrainConfig
from .data import RunData, build_data
from .distributed import DistContext, setup_distributed
from .inhibition import build_inhibition_schedule
from .machine import differences, machine_record, restore, settings
from .plugins import config_callbacks
from .rng import rng_state, seed_everything, set_rng_state
from .rundir import TENSORBOARD, RunDir, claim
from .schedule import build_scheduler
from .source import source_revision


class TrainingDiverged(RuntimeError):
    """The training loss of an epoch was not finite (NaN or inf): an expected failure of a setting
    (too high a learning rate, broken data), raised after that epoch's metrics are written."""


def _version() -> str:
    return source_revision()


def _trained_by(resume: Optional[dict], run: RunDir) -> list[str]:
    """The code revisions that trained this run, oldest first (``gradmask_version`` of each stretch of
    epochs); resuming with other code than the last is announced."""
    now = _version()
    if resume is None:
        return [now]
    before = list(resume.get("trained_by") or [resume.get("gradmask_version") or "unknown"])
    if before[-1] == now:
        return before
    epochs = int(resume["epoch"])
    print(f"gradmask: resuming {run.path} with code {now}; its {counted(epochs, 'finished epoch')} "
          f"{'was' if epochs == 1 else 'were'} trained by {', '.join(before)}", file=sys.stderr)
    return before + [now]


@dataclass
class TrainContext:
    """What callbacks see. ``model`` is the bare model (the mask hooks on it); ``net`` what the
    training step calls (``model``, or its DDP / compiled wrapper); ``epoch`` the number of epochs
    finished."""

    config: TrainConfig
    run_dir: RunDir
    device: torch.device
    dist: DistContext
    data: RunData
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    handle: Optional[MaskHandle]
    epoch: int = 0
    history: list = field(default_factory=list)
    gradient_mask: Optional[GradientMask] = None
    # (step, total_steps) -> rate, set before every step; None: the mask's rate is constant
    inhibition: Optional[Callable[[int, int], float]] = None
    # the code revisions that trained the run so far, oldest first (gradmask.train.source.source_revision)
    trained_by: list = field(default_factory=list)
    # the numerical setup of every stretch of training, oldest first (gradmask.train.machine.machine_record)
    machine: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def _device(requested: torch.device, dist_ctx: DistContext) -> torch.device:
    """The device this process trains on: ``requested`` (from :func:`resolve_device`), with the CUDA
    index of the process's local rank under torchrun, or the current CUDA device when none is given."""
    if requested.type != "cuda":
        return requested
    if dist_ctx.enabled or requested.index is None:
        return torch.device("cuda", dist_ctx.local_rank if dist_ctx.enabled else torch.cuda.current_device())
    return requested


def _device_name(device: torch.device, world_size: int) -> str:
    name = "cpu" if device.type == "cpu" else f"{device.type} ({torch.cuda.get_device_name(device)})"
    return name if world_size == 1 else f"{name} x{world_size}"


def _autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if amp == "none":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device (it trains with a GradScaler); on {device.type} "
                         f"use amp='bf16' or 'none'")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _callbacks(callbacks: Sequence, event: str) -> list[Callable]:
    out = []
    for cb in callbacks:
        method = getattr(cb, event, None)
        if method is not None:
            out.append(method)
        elif event == "on_epoch_end" and callable(cb) and not any(
                hasattr(cb, e) for e in ("on_train_start", "on_train_end")):
            out.append(cb)
    return out


def _summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``; without the tensorboard package a ValueError saying
    what to install (raised by :func:`train` before anything is read or written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ValueError(f"tensorboard (--tensorboard) needs the tensorboard package, which does not import here "
                         f"({exc}): pip install 'gradmask[tensorboard]', or leave tensorboard off") from None
    return SummaryWriter


def train(config: TrainConfig, callbacks: Sequence = ()) -> dict:
    """Train as ``config`` says; return the final metrics (the contents of ``final.json``).

    Under ``torchrun`` (env WORLD_SIZE > 1) or inside an initialised process group, every process
    calls ``train`` with the same config: DistributedDataParallel over disjoint data shards,
    metrics reduced over processes, files written by rank 0 only.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a gradmask.train.TrainConfig, got {type(config).__name__}")
    if config.tensorboard:
        _summary_writer_class()
    requested = resolve_device(config.device)
    dist_ctx = setup_distributed(requested.type)
    lock, found = None, settings()
    created = _missing_folders(Path(config.run_dir))
    try:
        lock = claim(RunDir(config.run_dir), dist_ctx)  # one job per run folder, before anything is read
        return _train(config, list(callbacks), dist_ctx, _device(requested, dist_ctx))
    finally:
        restore(found)  # a resume may have set the run's thread count: the caller's comes back
        if lock is not None:
            lock.release()
            for folder in created:  # a start that failed before writing anything leaves no folder
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        dist_ctx.close()


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _inhibition_schedule(gm: Optional[GradientMask], config: TrainConfig, steps_per_epoch: int):
    """The per-step rate schedule; None without a mask or when constant (the mask already holds
    ``config.mask_settings.inhibition_rate``: nothing to set per step)."""
    if gm is None or config.inhibition_schedule == "constant":
        return None
    return build_inhibition_schedule(config, steps_per_epoch)


def _machines(resume: Optional[dict], run: RunDir, device: torch.device, say: bool) -> list[dict]:
    """The numerical setup of every stretch of training, oldest first, this one last. A resume first
    restores the thread count and deterministic switch its last stretch trained with, and says so;
    it says too when anything it cannot restore differs (the result is then not bit-identical)."""
    if resume is None:
        return [machine_record(device)]
    before, start = list(resume.get("machine") or []), int(resume["epoch"]) + 1
    if not before:
        now = machine_record(device, start)
        if say:
            print(f"gradmask: resuming {run.path}: its checkpoint does not record the threads and CPU it was trained "
                  f"with (an older gradmask); the result is bit-identical to an uninterrupted run only if they were "
                  f"these ({now['threads']} threads, {now['cpu_capability']}, {now['cpu']})", file=sys.stderr)
        return [now]
    last, threads = before[-1], torch.get_num_threads()
    restore(last)
    now = machine_record(device, start)
    if say and now["threads"] != threads:
        print(f"gradmask: resuming {run.path} with {now['threads']} torch threads, the number its epochs were trained "
              f"with (this process had {threads}), so that the result is bit-identical to an uninterrupted run",
              file=sys.stderr)
    diff = differences(last, now)
    if say and diff:
        print(f"gradmask: resuming {run.path} on another setup than its epochs {last.get('from_epoch', 1)}-"
              f"{start - 1} were trained on (" + "; ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
              + "): the result will not be bit-identical to an uninterrupted run", file=sys.stderr)
    return before + [now]


def _check_forward(model: nn.Module, image_size: int, device: torch.device) -> None:
    """One forward pass of a blank image in eval mode without autograd (no random numbers drawn, no
    statistics updated): what fails at the first forward (``groups`` that do not divide a target's
    channels, a token grid that does not fit) fails before the run folder is written."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was)


def _say_start_again(run: RunDir, config: TrainConfig) -> None:
    """The message of a start over a run that finished no epoch (nothing of it is lost)."""
    try:
        changed = run.differences(config, ignore=RESUME_FREE_FIELDS, unstarted=True)
        what = (" with other settings (" + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()) + ")"
                if changed else "")
    except ValueError as exc:  # its config.json is damaged
        what = f" (its config cannot be read: {exc})"
    print(f"gradmask: starting the run in {run.path} again{what}: the run there finished no epoch, so nothing "
          f"of it is lost", file=sys.stderr)


def _train(config: TrainConfig, callbacks: list, dist_ctx: DistContext, device: torch.device) -> dict:
    autocast = _autocast_factory(config.amp, device)
    run = RunDir(config.run_dir)
    run.check_start(config.resume, config.overwrite)
    # verified checkpoint; a run of another config is refused, finished or not
    resume = run.resume_state(config) if config.resume else None
    if config.resume and run.finished:
        return run.read_final()
    machine = _machines(resume, run, device, dist_ctx.is_main)  # restores the run's thread count first
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    seed_everything(config.seed)
    augment = build_augment(config)
    data = build_data(config, augment, device, dist_ctx.rank, dist_ctx.world_size)
    stem = config.stem or ("imagenet" if data.image_size > 64 else "cifar")  # ImageNet: 224
    model_args = {"name": config.model, "num_classes": data.num_classes, "stem": stem,
                  "mean": list(data.mean), "std": list(data.std), "image_size": data.image_size,
                  "classes": list(data.classes)}
    model = build_model(model_args).to(device)  # same initial weights on every process
    if dist_ctx.enabled:  # then independent random streams per process (batch augmentation, dropout)
        seed_everything(config.seed + 1_000_003 * dist_ctx.rank)
    handle = None
    gm = None if config.mask == "none" else GradientMask.from_settings(config.mask_settings)
    if gm is not None:
        handle = attach(model, gm, targets=list(config.targets) if config.targets else None,
                        skip_last=config.skip_last)
    _check_forward(model, data.image_size, device)  # fails here, before anything is written or cleared
    if dist_ctx.is_main and resume is None:
        if run.unstarted and not config.overwrite:
            _say_start_again(run, config)
        run.clear()  # overwrite, a run that finished no epoch, or a resume with nothing to resume from
    dist_ctx.barrier()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    scheduler = build_scheduler(optimizer, config, data.train_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16")
    history: list[dict] = []
    start_epoch = 0
    if resume is not None:
        load_model_state(model, resume["model"], run.checkpoint)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        history = [dict(r) for r in resume["history"]]
        start_epoch = int(resume["epoch"])

    net: nn.Module = model
    if dist_ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    eval_net: nn.Module = model
    if config.compile:
        # Dynamo does not guard on module hooks: code compiled for an earlier model of this process
        # (compare's vanilla run) would be reused for this one without its mask hooks, or with stale ones
        torch._dynamo.reset()
        # static shapes with a mask: when the mask broke the graph at every target, automatic dynamic shapes
        # made inductor fail on grouped convolutions (torch 2.13); kept now that the mask's operator
        # compiles into the model's graph (not measured again without it)
        options = {"dynamic": False} if handle is not None else {}
        net = torch.compile(net, **options)
        eval_net = net if not dist_ctx.enabled else torch.compile(model, **options)

    trained_by = _trained_by(resume, run) if dist_ctx.is_main else []
    writer = None
    if dist_ctx.is_main:
        run.write_config(config.to_dict(), _version(), trained_by, machine)
        if resume is not None:
            run.write_metrics(history, jsonl=True)  # drop records of epochs after the checkpoint
        if config.tensorboard:
            writer = _summary_writer_class()(str(run / TENSORBOARD))

    ctx = TrainContext(config, run, device, dist_ctx, data, model, net, optimizer, scheduler, scaler,
                       handle, epoch=start_epoch, history=history, gradient_mask=gm,
                       inhibition=_inhibition_schedule(gm, config, data.train_steps), trained_by=trained_by,
                       machine=machine)
    callbacks = [*callbacks, *config_callbacks(config, data)]  # e.g. the GSNR probe of gsnr_every
    for cb in _callbacks(callbacks, "on_train_start"):
        cb(ctx)
    if resume is not None:  # last: everything above may draw random numbers
        per_rank = resume.get("rank_states") or []
        mine = per_rank[dist_ctx.rank] if len(per_rank) == dist_ctx.world_size else resume
        set_rng_state(mine["rng"])
        data.load_loader_state(mine["loader"])

    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    batch_augment = augment.batch
    show = config.progress and dist_ctx.is_main
    checkpoint = None if resume is None else resume.get("checksum")  # of the last checkpoint written
    try:
        for epoch in range(start_epoch, config.epochs):
            start = time.perf_counter()
            train_loss, train_acc, images, lr = _train_epoch(ctx, epoch, criterion, autocast, batch_augment, show)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - start
            dist_ctx.average_buffers(model)
            test_loss, test_acc, test_top5 = _evaluate(ctx, eval_net, autocast, ctx.data.test_batches())
            fit = (_evaluate(ctx, eval_net, autocast, data.train_eval_batches())
                   if data.train_eval_size else None)
            mask_kept, energy_kept = _mask_statistics(handle, dist_ctx, device)
            epoch_seconds = time.perf_counter() - start
            ev = data.eval_split  # "test", or "val" with a validation split (the test split unread)
            record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                      f"{ev}_loss": test_loss, f"{ev}_acc": test_acc, f"{ev}_top5": test_top5, "lr": lr,
                      "epoch_seconds": epoch_seconds, "images_per_second": images / max(train_time, 1e-9),
                      "mask_kept": mask_kept, "mask_energy_kept": energy_kept}
            if fit is not None:  # the fixed un-augmented training subset, in eval mode (train_eval_images)
                record.update(train_eval_loss=fit[0], train_eval_acc=fit[1])
            if gm is not None:  # the rate in force at the epoch's last step (inhibition_schedule)
                record["inhibition_rate"] = gm.inhibition_rate
            ctx.epoch = epoch + 1
            for cb in _callbacks(callbacks, "on_epoch_end"):
                cb(ctx, record)
            history.append(record)
            if dist_ctx.is_main:
                run.append_metrics(record)
                run.write_metrics(history)
                if writer is not None:
                    _log_tensorboard(writer, record)
                if show:
                    tqdm.write(_summary(record, config.epochs, data.eval_split), file=sys.stderr)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"training diverged at epoch {epoch + 1} (train loss {train_loss}); "
                                       f"lower lr (--lr, now {config.lr}) or check the data")
            rank_states = dist_ctx.all_gather_object({"rng": rng_state(), "loader": data.loader_state()})
            if dist_ctx.is_main:
                checkpoint = save_checkpoint(run.checkpoint, _checkpoint_state(ctx, model_args, rank_states))
        last = history[-1]
        ev = data.eval_split
        final = {f"{ev}_acc": last[f"{ev}_acc"], f"{ev}_top5": last[f"{ev}_top5"], f"{ev}_loss": last[f"{ev}_loss"],
                 "epochs": config.epochs, "train_seconds": sum(r["epoch_seconds"] for r in history),
                 "device": _device_name(device, dist_ctx.world_size), "model": config.model,
                 "mask": config.mask, "seed": config.seed,
                 "num_params": sum(p.numel() for p in model.parameters()), "trained_by": trained_by,
                 "checkpoint": checkpoint if dist_ctx.is_main else None}
        dist_ctx.barrier()
        if dist_ctx.is_main:
            run.write_final(final)
        for cb in _callbacks(callbacks, "on_train_end"):
            cb(ctx, final)
        return final
    finally:
        if writer is not None:
            writer.close()
        if handle is not None:
            handle.remove()


def _train_epoch(ctx: TrainContext, epoch: int, criterion, autocast, batch_augment, show: bool):
    """One pass over this process's shard. Returns (loss, accuracy, images) over all processes and
    the lr of the epoch's last step."""
    config, data, net, optimizer, scaler = ctx.config, ctx.data, ctx.net, ctx.optimizer, ctx.scaler
    device, world = ctx.device, ctx.dist.world_size
    net.train()
    data.set_epoch(epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    lr = optimizer.param_groups[0]["lr"]
    total_steps = config.epochs * data.train_steps
    bar = tqdm(total=data.train_steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
               disable=not show or not sys.stderr.isatty(), leave=False, dynamic_ncols=True, file=sys.stderr)
    with bar:
        for step, (x, y) in enumerate(data.train_batches()):
            if ctx.inhibition is not None:
                ctx.gradient_mask.inhibition_rate = ctx.inhibition(epoch * data.train_steps + step, total_steps)
            if batch_augment is not None:
                x = batch_augment(x, y, ctx.model)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = net(x)
                loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            if scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            ctx.scheduler.step()
            n = y.shape[0]
            loss_sum += loss.detach().to(torch.float64) * n
            correct += (logits.detach().argmax(1) == y).sum()
            count += n
            if show:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}",
                                    img_s=f"{bar.format_dict['rate'] * n * world:.0f}"
                                    if bar.format_dict.get("rate") else "-")
    totals = torch.stack([loss_sum, correct.to(torch.float64), torch.tensor(float(count), dtype=torch.float64,
                                                                             device=device)])
    ctx.dist.all_reduce_sum(totals)
    loss_total, correct_total, images = totals.tolist()
    return loss_total / images, correct_total / images, int(images), lr


def _evaluate(ctx: TrainContext, eval_net: nn.Module, autocast, batches) -> tuple[float, float, float]:
    """(loss, top-1, top-5) over ``batches`` (``(images, labels, valid)``: the test set, or the fixed
    training subset), every image counted once over all processes."""
    eval_net.eval()
    k = min(5, ctx.data.num_classes)
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)
    with torch.no_grad(), autocast():
        for x, y, valid in batches:
            if ctx.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = eval_net(x).float()
            loss = F.cross_entropy(logits, y, reduction="none")
            top = logits.topk(k, dim=1).indices
            hits = top == y[:, None]
            w = torch.ones_like(loss) if valid is None else valid.to(loss.dtype)
            sums += torch.stack([(loss * w).sum(), (hits[:, 0] * w).sum(), (hits.any(1) * w).sum(),
                                 w.sum()]).to(torch.float64)
    ctx.dist.all_reduce_sum(sums)
    loss_sum, top1, top5, n = sums.tolist()
    n = max(n, 1.0)
    return loss_sum / n, top1 / n, top5 / n


def _mask_statistics(handle: Optional[MaskHandle], dist_ctx: DistContext, device
                     ) -> tuple[Optional[dict], Optional[dict]]:
    """Per target, the epoch's kept fraction of positions and share of the gradient's energy kept
    (``||masked||^2 / ||g||^2``), each the mean over processes; ``(None, None)`` without a mask.
    Resets the handle's stats."""
    if handle is None:
        return None, None
    stats = handle.stats()
    handle.reset_stats()
    names = list(stats)
    keys = ("kept_fraction", "energy_kept")
    values = torch.tensor([[stats[n][k] if stats[n][k] is not None else float("nan") for k in keys] for n in names],
                          dtype=torch.float64, device=device).reshape(len(names), len(keys))
    dist_ctx.all_reduce_sum(values)
    values /= dist_ctx.world_size
    rows = values.tolist()
    return tuple({n: (None if math.isnan(row[k]) else row[k]) for n, row in zip(names, rows)}
                 for k in range(len(keys)))


def _checkpoint_state(ctx: TrainContext, model_args: dict, rank_states: list) -> dict:
    """The checkpoint dict; ``rng`` / ``loader`` are rank 0's, ``rank_states`` every process's
    (restored per rank when resuming with the same number of processes)."""
    return {
        "format": FORMAT,
        "gradmask_version": _version(),
        "trained_by": ctx.trained_by,
        "machine": ctx.machine,
        "epoch": ctx.epoch,
        "model": ctx.model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler.is_enabled() else None,
        "rng": rank_states[0]["rng"],
        "loader": rank_states[0]["loader"],
        "rank_states": rank_states if len(rank_states) > 1 else None,
        "config": ctx.config.to_dict(),
        "model_args": model_args,
        "history": ctx.history,
    }


def _log_tensorboard(writer, record: dict) -> None:
    """One epoch's record under the logged names (:mod:`gradmask.util.metric_names`: ``train/loss``,
    ``gradmask/kept/<target>``, ...), at step = epoch."""
    for tag, value in logged_scalars(record).items():
        writer.add_scalar(tag, value, record["epoch"])
    writer.flush()


def _summary(r: dict, epochs: int, ev: str = "test") -> str:
    kept = [v for v in (r["mask_kept"] or {}).values() if v is not None]
    mask = f" | kept {sum(kept) / len(kept):.3f}" if kept else ""
    if kept and r.get("inhibition_rate") is not None:
        mask += f" at rate {r['inhibition_rate']:.3g}"
    fit = f" (eval {r['train_eval_acc']:.4f})" if r.get("train_eval_acc") is not None else ""
    return (f"epoch {r['epoch']}/{epochs}: train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}{fit} | "
            f"{ev} loss {r[f'{ev}_loss']:.4f} acc {r[f'{ev}_acc']:.4f} top5 {r[f'{ev}_top5']:.4f}{mask} | "
            f"lr {r['lr']:.4g} | {r['epoch_seconds']:.1f} s, {r['images_per_second']:.0f} img/s")


__all__ = ["TrainContext", "TrainingDiverged", "train"]
