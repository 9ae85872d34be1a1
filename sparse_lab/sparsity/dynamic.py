"""Dynamic sparse training at a fixed parameter budget: RigL, SET and DSL.

Every ``delta_t`` optimizer steps a fraction f(t) of the active weights with the smallest |w| is
dropped and the same number of inactive connections is grown, so the number of nonzero weights never
changes. Grown weights start at zero and their optimizer state (SGD momentum, Adam's exp_avg /
exp_avg_sq) is reset at the grown positions.

- RigL (Evci et al., ICML 2020): per layer; grow where the dense gradient |∇L| is largest; f(t) =
  α/2 · (1 + cos(π t / T_end)), α = 0.3, ΔT = 100, T_end = 75% of training; ERK.
- SET (Mocanu et al., Nature Communications 2018): per layer; grow at random positions; constant ζ = 0.3.
- DSL (Wang et al. 2024, "Dynamic Sparse Learning: a novel paradigm for efficient recommendation"):
  drop and grow globally across layers (the layer-wise distribution adapts), cosine-decayed update ratio
  0.5 → 0.005 over the whole of training; growth by gradient magnitude.

The update runs in ``on_before_optimizer_step``: the weights were masked in place after the previous
step, so the ``.grad`` of a pruned weight is exactly the dense gradient, and under DDP Lightning has
already averaged the gradients across ranks. Random growth (SET) draws from a generator seeded
identically on every rank. Every decision is thus taken on identical data on every rank.
"""

from __future__ import annotations

import functools
import math

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.errors import UserError, check_range
from sparse_lab.sparsity import METHODS
from sparse_lab.sparsity.base import SparsityMethod
from sparse_lab.sparsity.masks import kept_count, random_mask

ALPHA_SCHEDULES = ("cosine", "constant")


class DynamicSparse(SparsityMethod):
    """Drop by magnitude, grow by ``grow`` ("gradient" | "random"), per layer or globally."""

    grow = "gradient"
    scope = "layer"

    def __init__(
        self,
        sparsity: float = 0.8,
        distribution: str = "erk",
        delta_t: int = 100,
        alpha: float = 0.3,
        final_alpha: float = 0.0,
        alpha_schedule: str = "cosine",
        end_fraction: float = 0.75,
        prune_first_layer: bool = False,
        prune_classifier: bool = False,
        exclude: list[str] | tuple[str, ...] = (),
    ):
        super().__init__(sparsity, distribution, prune_first_layer, prune_classifier, exclude)
        if int(delta_t) != delta_t or int(delta_t) < 1:
            raise UserError(f"sparsity.delta_t must be a positive number of steps, got {delta_t!r}")
        if alpha_schedule not in ALPHA_SCHEDULES:
            raise UserError(
                f"unknown sparsity.alpha_schedule {alpha_schedule!r}; choose one of: {', '.join(ALPHA_SCHEDULES)}"
            )
        self.delta_t = int(delta_t)
        self.alpha = check_range("sparsity.alpha", alpha, 0.0, 1.0, high_inclusive=True)
        self.final_alpha = check_range("sparsity.final_alpha", final_alpha, 0.0, self.alpha, high_inclusive=True)
        self.alpha_schedule = alpha_schedule
        self.end_fraction = check_range("sparsity.end_fraction", end_fraction, 0.0, 1.0, high_inclusive=True)
        self.total_steps = 1
        self.history: list[dict] = []
        self._generator = torch.Generator()

    # -- set-up -------------------------------------------------------------------------------
    def attach(self, model: nn.Module, seed: int = 0, example_input=None) -> None:
        super().attach(model, seed, example_input)
        # Same seed on every rank -> identical random growth decisions everywhere.
        self._generator = torch.Generator().manual_seed(seed + 1)

    def initial_masks(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {
            p.name: random_mask(p.shape, kept_count(density, p.numel), generator)
            for p, density in zip(self.params, self.target_densities)
            if density < 1.0
        }

    # -- schedule -----------------------------------------------------------------------------
    @property
    def end_step(self) -> int:
        return int(self.end_fraction * self.total_steps)

    def update_fraction(self, step: int) -> float:
        """f(t): the fraction of each layer's (or, globally, all) active weights replaced at step t."""
        if self.alpha_schedule == "constant":
            return self.alpha
        progress = min(1.0, step / max(1, self.end_step))
        return self.final_alpha + (self.alpha - self.final_alpha) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def is_update_step(self, step: int) -> bool:
        return step > 0 and step % self.delta_t == 0 and step < self.end_step

    # -- the update ---------------------------------------------------------------------------
    def _grow_scores(self, weight: torch.Tensor, mask_flat: torch.Tensor) -> torch.Tensor:
        if self.grow == "gradient":
            if weight.grad is None:
                raise RuntimeError(f"{self.name}: a masked weight has no gradient at the update step")
            return weight.grad.detach().reshape(-1).abs()
        return torch.rand(mask_flat.numel(), generator=self._generator).to(mask_flat.device)

    @torch.no_grad()
    def update_masks(self, step: int, optimizers=()) -> int:
        """Drop and regrow at ``step``; returns how many connections changed (grown = dropped)."""
        fraction = self.update_fraction(step)
        names = list(self.masks)
        by_name = dict(zip(names, self._masked))
        flats = [self.masks[n].view(-1) for n in names]
        weights = [by_name[n] for n in names]
        grown_by_layer: dict[str, torch.Tensor] = {}
        if self.scope == "layer":
            for name, flat, weight in zip(names, flats, weights):
                count = int(fraction * int(flat.sum()))
                if count == 0:
                    continue
                magnitude = weight.detach().reshape(-1).abs()
                grow_scores = functools.partial(self._grow_scores, weight)
                grown_by_layer[name] = self._drop_grow(flat, magnitude, grow_scores, count)
        else:
            sizes = [f.numel() for f in flats]
            flat = torch.cat(flats)
            count = int(fraction * int(flat.sum()))
            if count:
                magnitudes = torch.cat([w.detach().reshape(-1).abs() for w in weights])
                grow = lambda keep: torch.cat([self._grow_scores(w, f) for w, f in zip(weights, flats)])
                grown = self._drop_grow(flat, magnitudes, grow, count)
                offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
                for i, (name, f) in enumerate(zip(names, flats)):
                    f.copy_(flat[offsets[i] : offsets[i + 1]])
                    local = grown[(grown >= offsets[i]) & (grown < offsets[i + 1])] - offsets[i]
                    if local.numel():
                        grown_by_layer[name] = local
        # Refresh the float multipliers; grown weights start at zero; reset their optimizer state.
        for mult, name in zip(self._multipliers, names):
            mult.copy_(self.masks[name])
        changed = 0
        for name, idx in grown_by_layer.items():
            weight = by_name[name]
            weight.data.view(-1)[idx] = 0.0
            reset_optimizer_state(optimizers, weight, idx)
            changed += idx.numel()
        self.history.append({"step": step, "fraction": fraction, "changed": changed})
        return changed

    @staticmethod
    def _drop_grow(mask: torch.Tensor, magnitude: torch.Tensor, grow_scores, count: int) -> torch.Tensor:
        """Update the flat bool ``mask`` in place; return the flat indices of new connections."""
        drop_scores = torch.where(mask, magnitude, torch.full_like(magnitude, math.inf))
        dropped = torch.topk(drop_scores, count, largest=False, sorted=False).indices
        before = mask.clone()
        mask[dropped] = False
        scores = grow_scores(mask).to(magnitude.dtype)
        # Survivors cannot be grown again; a just-dropped connection may be (it then keeps its value).
        scores = torch.where(mask, torch.full_like(scores, -math.inf), scores)
        grown = torch.topk(scores, count, sorted=False).indices
        mask[grown] = True
        return grown[~before[grown]]

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.total_steps = max(1, int(trainer.estimated_stepping_batches))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        step = trainer.global_step
        if not self.is_update_step(step) or (self.history and self.history[-1]["step"] == step):
            return
        changed = self.update_masks(step, trainer.optimizers)
        pl_module.log("sparsity/changed", float(changed), on_step=True, on_epoch=False, sync_dist=False)
        pl_module.log("sparsity/update_fraction", self.history[-1]["fraction"], on_step=True, on_epoch=False)

    # -- state and reporting ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "history": list(self.history), "generator": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.history = list(state_dict.get("history", []))
        if "generator" in state_dict:
            self._generator.set_state(state_dict["generator"])

    def details(self) -> dict:
        return {
            **super().details(),
            "grow": self.grow,
            "scope": self.scope,
            "delta_t": self.delta_t,
            "alpha": self.alpha,
            "final_alpha": self.final_alpha,
            "alpha_schedule": self.alpha_schedule,
            "end_step": self.end_step,
            "total_steps": self.total_steps,
            "updates": list(self.history),
            "total_changed": sum(h["changed"] for h in self.history),
        }


def reset_optimizer_state(optimizers, weight: torch.Tensor, flat_index: torch.Tensor) -> None:
    """Zero every per-element state tensor of ``weight`` (momentum, exp_avg, exp_avg_sq, ...) at ``flat_index``."""
    for optimizer in optimizers:
        state = optimizer.state.get(weight)
        if not state:
            continue
        for value in state.values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                value.view(-1)[flat_index] = 0


@METHODS.register("rigl")
class RigL(DynamicSparse):
    grow = "gradient"
    scope = "layer"


@METHODS.register("set")
class SET(DynamicSparse):
    grow = "random"
    scope = "layer"

    def __init__(
        self,
        sparsity: float = 0.8,
        distribution: str = "erk",
        delta_t: int = 100,
        alpha: float = 0.3,
        final_alpha: float = 0.0,
        alpha_schedule: str = "constant",
        end_fraction: float = 1.0,
        **kwargs,
    ):
        super().__init__(sparsity, distribution, delta_t, alpha, final_alpha, alpha_schedule, end_fraction, **kwargs)


@METHODS.register("dsl")
class DSL(DynamicSparse):
    grow = "gradient"
    scope = "global"

    def __init__(
        self,
        sparsity: float = 0.8,
        distribution: str = "erk",
        delta_t: int = 100,
        alpha: float = 0.5,
        final_alpha: float = 0.005,
        alpha_schedule: str = "cosine",
        end_fraction: float = 1.0,
        **kwargs,
    ):
        super().__init__(sparsity, distribution, delta_t, alpha, final_alpha, alpha_schedule, end_fraction, **kwargs)
