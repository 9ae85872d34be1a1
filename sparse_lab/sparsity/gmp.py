"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

Sparsity follows the cubic schedule s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(nΔt))³ for t_0 ≤ t ≤ t_0 + nΔt:
every Δt optimizer steps (and at t_0 + nΔt) each layer is pruned by magnitude to its share of s_t
(exact count; per-layer densities from the configured distribution). Pruned weights stay pruned
(masks only shrink) and are held at zero by the in-place mask after every step.

*Ours:* t_0 and t_0 + nΔt are given as fractions of training (``start``, ``end``, of
``trainer.estimated_stepping_batches``), Δt in steps (``frequency``). If fit ends before the last
pruning step (early stopping, a time limit), the final sparsity is applied at the end of fit.
``pointwise_only`` restricts pruning to 1×1 convolutions, as in Fast Sparse ConvNets (Elsen et al. 2020).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.errors import UserError, check_range
from sparse_lab.sparsity import METHODS
from sparse_lab.sparsity.base import SparsityMethod
from sparse_lab.sparsity.distributions import layer_densities
from sparse_lab.sparsity.masks import kept_count, topk_mask
from sparse_lab.sparsity.prunable import PrunableParam

log = logging.getLogger(__name__)


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's s_t: s_i until ``start``, the cubic ramp, then s_f from ``end`` on."""
    if end <= start:
        return final if step >= start else initial
    progress = min(1.0, max(0.0, (step - start) / (end - start)))
    return final + (initial - final) * (1.0 - progress) ** 3


def is_pointwise_conv(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and module.groups == 1
        and all(k == 1 for k in module.kernel_size)
    )


@METHODS.register("gmp")
class GradualMagnitudePruning(SparsityMethod):
    def __init__(
        self,
        sparsity: float = 0.8,
        initial_sparsity: float = 0.0,
        distribution: str = "uniform",
        start: float = 0.1,
        end: float = 0.7,
        frequency: int = 100,
        pointwise_only: bool = False,
        prune_first_layer: bool = False,
        prune_classifier: bool = False,
        exclude: list[str] | tuple[str, ...] = (),
    ):
        super().__init__(sparsity, distribution, prune_first_layer, prune_classifier, exclude)
        self.initial_sparsity = check_range(
            "sparsity.initial_sparsity", initial_sparsity, 0.0, self.sparsity, high_inclusive=True
        )
        self.start = check_range("sparsity.start", start, 0.0, 1.0, high_inclusive=True)
        self.end = check_range("sparsity.end", end, self.start, 1.0, high_inclusive=True)
        if int(frequency) != frequency or int(frequency) < 1:
            raise UserError(f"sparsity.frequency must be a positive number of steps, got {frequency!r}")
        self.frequency = int(frequency)
        self.pointwise_only = bool(pointwise_only)
        self.start_step, self.end_step = 0, 0
        self.history: list[dict] = []
        self.current_sparsity = 0.0

    # -- set-up -------------------------------------------------------------------------------
    def select_params(self, model: nn.Module) -> list[PrunableParam]:
        params = super().select_params(model)
        if not self.pointwise_only:
            return params
        pointwise = [p for p in params if is_pointwise_conv(p.module)]
        if not pointwise and self.sparsity > 0:
            raise UserError(
                f"{self.name}: the model has no prunable weights under the current rule "
                "(pointwise_only: 1x1 convolutions)"
            )
        return pointwise

    def not_selected_reason(self, name: str) -> str:
        if self.pointwise_only:
            return "not a 1x1 convolution (sparsity.pointwise_only=true)"
        return super().not_selected_reason(name)

    def attach(self, model: nn.Module, seed: int = 0, example_input=None) -> None:
        self.history, self.current_sparsity = [], 0.0
        super().attach(model, seed, example_input)  # dense (no initial masks) until the schedule prunes
        self.prune_to(self.initial_sparsity, step=0)

    def schedule(self, step: int) -> float:
        return cubic_sparsity(step, self.initial_sparsity, self.sparsity, self.start_step, self.end_step)

    def is_pruning_step(self, step: int) -> bool:
        if not self.start_step <= step <= self.end_step:
            return False
        return (step - self.start_step) % self.frequency == 0 or step == self.end_step

    @torch.no_grad()
    def prune_to(self, sparsity: float, step: int) -> None:
        """Prune every layer by magnitude to its share of ``sparsity``; pruned weights stay pruned."""
        if sparsity <= 0.0 or sparsity <= self.current_sparsity:
            return
        densities = layer_densities([p.fan_shape for p in self.params], 1.0 - sparsity, self.distribution)
        masks = {}
        for p, density in zip(self.params, densities):
            if density >= 1.0:
                continue
            scores = p.param.detach().abs()
            if p.name in self.masks:  # already pruned positions rank below every survivor
                scores = torch.where(self.masks[p.name], scores, torch.full_like(scores, -1.0))
            masks[p.name] = topk_mask(scores, kept_count(density, p.numel))
        self.set_masks(masks)
        self.current_sparsity = sparsity
        self.history.append({"step": step, "sparsity": sparsity, "achieved": self.target_sparsity()})

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        total = max(1, int(trainer.estimated_stepping_batches))
        self.start_step = round(self.start * total)
        self.end_step = max(self.start_step, round(self.end * total))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps completed
        if self.is_pruning_step(step) and not (self.history and self.history[-1]["step"] == step):
            self.prune_to(self.schedule(step), step)
            pl_module.log("sparsity/scheduled", self.current_sparsity, on_step=True, on_epoch=False)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # At fit end rather than train end: a fit resumed from the last epoch's checkpoint runs no training
        # loop (no on_train_end) but still ends its fit here.
        if self.current_sparsity < self.sparsity:
            log.info(
                "gmp: training ended at step %d before the schedule's end (%d); pruning to %.3f now",
                trainer.global_step,
                self.end_step,
                self.sparsity,
            )
            self.prune_to(self.sparsity, trainer.global_step)

    # -- state and reporting ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "history": list(self.history), "current_sparsity": self.current_sparsity}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.history = list(state_dict.get("history", []))
        self.current_sparsity = float(state_dict.get("current_sparsity", 0.0))

    def details(self) -> dict:
        return {
            **super().details(),
            "initial_sparsity": self.initial_sparsity,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "pointwise_only": self.pointwise_only,
            "pruned_layers": [p.name for p in self.params],
            "schedule": list(self.history),
        }
