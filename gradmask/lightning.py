"""Gradient Mask in a Lightning ``Trainer`` (the ``lightning`` extra: ``pip install -e ".[lightning]"`` in a
checkout, ``pip install "gradmask[lightning]"`` from a wheel).

    import gradmask, lightning
    from gradmask.lightning import GradientMaskCallback

    mask = GradientMaskCallback(gradmask.GradientMask(groups=16), targets=None, skip_last=2)
    lightning.Trainer(callbacks=[mask]).fit(module, data)

The mask is attached to the ``LightningModule`` when fitting starts (target names are relative to
it, e.g. ``"model.layer1.0"`` for a module that holds ``self.model``), removed while validation,
test or predict loops run (no backward there) and put back afterwards, and removed when fitting
ends or fails. The kept fraction and the share of the gradient's energy kept of each target are
logged once per training epoch with ``LightningModule.log`` under the names ``gradmask train`` gives
them in TensorBoard (:mod:`gradmask.util.metric_names`: ``gradmask/kept/<target>``,
``gradmask/energy_kept/<target>``), averaged over processes under DDP.
"""
from __future__ import annotations

from typing import Iterable, Optional

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("gradmask.lightning needs Lightning: pip install 'gradmask[lightning]' "
                      "(in a checkout: pip install -e '.[lightning]'; or pip install lightning)") from exc

from .hooks import MaskHandle, Target, _check_token_grid, attach
from .mask import GradientMask
from .util.metric_names import PER_TARGET, metric_tag

LOG_PREFIX = PER_TARGET["mask_kept"]  # "gradmask/kept"


class GradientMaskCallback(Callback):
    """Attach ``gradient_mask`` to the module being fitted (see :func:`gradmask.attach`).

    Args:
        gradient_mask: the :class:`gradmask.GradientMask` to apply.
        targets: module names / name patterns / types relative to the ``LightningModule``; None:
            every residual block but the last ``skip_last``.
        skip_last: see :func:`gradmask.attach`.
        token_grid: the patch grid ``(H, W)`` of token targets ``(N, T, D)``, see :func:`gradmask.attach`.
        prefix_tokens: the class / register tokens before the patches, see :func:`gradmask.attach`.
        log_kept: log the kept fraction and the energy kept per target at the end of each training
            epoch.

    ``handle`` is the live :class:`gradmask.MaskHandle` while fitting (None otherwise). The
    callback holds no state a checkpoint needs: the mask is attached again when a resumed fit starts.
    """

    def __init__(self, gradient_mask: GradientMask, targets: Optional[Iterable[Target]] = None,
                 skip_last: int = 2, token_grid: Optional[tuple[int, int]] = None,
                 prefix_tokens: Optional[int] = None, log_kept: bool = True):
        if not isinstance(gradient_mask, GradientMask):
            raise ValueError(f"gradient_mask must be a gradmask.GradientMask, got {type(gradient_mask).__name__}")
        if isinstance(skip_last, bool) or not isinstance(skip_last, int) or skip_last < 0:
            raise ValueError(f"skip_last must be an integer >= 0, got {skip_last!r}")
        _check_token_grid(token_grid, prefix_tokens)
        self.gradient_mask = gradient_mask
        self.targets = None if targets is None else list(targets) if not isinstance(targets, str) else [targets]
        self.skip_last = skip_last
        self.token_grid = token_grid
        self.prefix_tokens = prefix_tokens
        self.log_kept = log_kept
        self.handle: Optional[MaskHandle] = None
        self._paused = False

    # -- fitting ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self._remove()
        try:
            self.handle = attach(pl_module, self.gradient_mask, self.targets, self.skip_last,
                                 self.token_grid, self.prefix_tokens)
        except ValueError as error:
            raise ValueError(f"GradientMaskCallback: {error} (relative to the LightningModule "
                             f"{type(pl_module).__name__}: GradientMaskCallback(..., targets=[...]))") from None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.handle is None:
            return
        if self.log_kept:
            for name, stats in self.handle.stats().items():
                for key, value in (("mask_kept", stats["kept_fraction"]), ("mask_energy_kept", stats["energy_kept"])):
                    if value is not None:
                        pl_module.log(metric_tag(key, name), value, on_step=False, on_epoch=True, sync_dist=True)
        self.handle.reset_stats()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._remove()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._remove()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._remove()

    # -- loops without a backward ----------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._resume()

    def on_test_start(self, trainer, pl_module) -> None:
        self._pause()

    def on_test_end(self, trainer, pl_module) -> None:
        self._resume()

    def on_predict_start(self, trainer, pl_module) -> None:
        self._pause()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._resume()

    # -- helpers -------------------------------------------------------------------------------------
    def _pause(self) -> None:
        if self.handle is not None and not self._paused:
            self.handle.remove()
            self._paused = True

    def _resume(self) -> None:
        if self.handle is not None and self._paused:
            self.handle.reattach()
            self._paused = False

    def _remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle = None
        self._paused = False

    def __repr__(self) -> str:
        return (f"GradientMaskCallback({self.gradient_mask}, targets={self.targets}, skip_last={self.skip_last}, "
                f"attached={self.handle is not None and not self._paused})")


__all__ = ["GradientMaskCallback", "LOG_PREFIX"]
