"""Robustness and gradient quality of trained models (the paper's Section 3.3).

- :func:`pruning_curve` (Fig. 5): accuracy after L1 magnitude pruning, per layer or global;
- :func:`fgsm` / :func:`fgsm_curve` (Fig. 6): FGSM, accuracy on the images every model gets right;
- :func:`gsnr` / :func:`gsnr_summary` / :class:`GSNRProbe` (Fig. 7): gradient signal-to-noise
  ratio from per-sample gradients (``torch.func``), with the gradient mask when there is one;
- :func:`gradmask.robustness.measure.measure`: pruning and FGSM of loaded models on one evaluation
  set (the ``gradmask robustness`` command, :mod:`gradmask.cli.robustness`, and reproduce's
  Figures 5/6); :func:`write_report`.

Images are in [0, 1] everywhere (normalisation is the model's first layer). Gradient mask hooks
on a model are switched off while it is attacked or evaluated (:func:`gradmask.no_gradient_mask`).
"""
from .fgsm import FGSMCurve, fgsm, fgsm_curve
from .gsnr import GSNRProbe, GSNRResult, gsnr, gsnr_summary, read_gsnr
from .pruning import PruningCurve, prune_model, pruning_curve, weight_sparsity
from .report import plot_gsnr, write_report

__all__ = ["FGSMCurve", "GSNRProbe", "GSNRResult", "PruningCurve", "fgsm", "fgsm_curve", "gsnr",
           "gsnr_summary", "plot_gsnr", "prune_model", "pruning_curve",
           "read_gsnr", "weight_sparsity", "write_report"]
