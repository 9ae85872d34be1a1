"""The sparsity method base: a Lightning Callback that owns one boolean mask per prunable weight.

Masks are enforced by multiplying the weights in place after every optimizer step (not by forward
hooks, which cost more per step and miss weights read directly). A subclass decides the masks
(``initial_masks``) and, for iterative methods, how many training rounds a run has.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.errors import UserError, check_range
from sparse_lab.sparsity.distributions import DISTRIBUTIONS, layer_densities
from sparse_lab.sparsity.prunable import PrunableParam, dense_weight_layers, is_weight_layer, prunable_parameters


class SparsityMethod(pl.Callback):
    rounds = 1  # full train/test cycles per run (iterative methods have more)

    def __init__(
        self,
        sparsity: float = 0.0,
        distribution: str = "uniform",
        prune_first_layer: bool = False,
        prune_classifier: bool = False,
        exclude: list[str] | tuple[str, ...] = (),
    ):
        super().__init__()
        self.sparsity = check_range("sparsity.sparsity", sparsity, 0.0, 1.0)
        if distribution not in DISTRIBUTIONS:
            raise UserError(
                f"unknown sparsity.distribution {distribution!r}; choose one of: {', '.join(DISTRIBUTIONS)}"
            )
        self.distribution = distribution
        self.prune_first_layer, self.prune_classifier, self.exclude = prune_first_layer, prune_classifier, list(exclude)
        self.params: list[PrunableParam] = []
        self.dense_layers: list[dict] = []  # weight layers left dense: {"name", "shape", "reason"} (details())
        self.target_densities: list[float] = []
        self.masks: dict[str, torch.Tensor] = {}
        self._masked: list[torch.Tensor] = []  # weights that have a mask, aligned with _multipliers
        self._multipliers: list[torch.Tensor] = []

    @property
    def name(self) -> str:
        """The registered name (``@METHODS.register``); a plug-in method's class name otherwise."""
        return type(self).__dict__.get("registered_name", type(self).__name__)

    # -- set-up -------------------------------------------------------------------------------
    def attach(self, model: nn.Module, seed: int = 0, example_input=None) -> None:
        """Choose the prunable weights of ``model``, build the masks and zero the pruned weights.

        ``example_input`` (one sample, as the datamodule's ``example_input()``) is for methods that
        must trace or measure the model (structured methods on models that declare no channel groups)."""
        self.params = self.select_params(model)
        self.dense_layers = self.kept_dense(model)
        if not self.params and self.sparsity > 0:
            raise UserError(f"{self.name}: the model has no prunable weights under the current rule")
        self.target_densities = layer_densities(
            [p.fan_shape for p in self.params], 1.0 - self.sparsity, self.distribution
        )
        self.set_masks(self.initial_masks(torch.Generator().manual_seed(seed)))

    def select_params(self, model: nn.Module) -> list[PrunableParam]:
        """The weights this method sparsifies: the project's prunable-parameter rule (methods narrow it)."""
        return prunable_parameters(model, self.prune_first_layer, self.prune_classifier, self.exclude)

    def kept_dense(self, model: nn.Module) -> list[dict]:
        """The weight layers this method leaves dense, in model order, each with the reason: the rule's
        (first layer, classifier, ``exclude``) or the method's own (``not_selected_reason``)."""
        rule = {
            row["name"]: row
            for row in dense_weight_layers(model, self.prune_first_layer, self.prune_classifier, self.exclude)
        }
        chosen = {p.name for p in self.params}
        rows = []
        for name, module in model.named_modules():
            weight = f"{name}.weight" if name else "weight"
            if not is_weight_layer(module) or weight in chosen:
                continue
            reason = rule[weight]["reason"] if weight in rule else self.not_selected_reason(weight)
            rows.append({"name": weight, "shape": list(module.weight.shape), "reason": reason})
        return rows

    def not_selected_reason(self, name: str) -> str:
        """Why a weight the prunable-parameter rule allows is not among this method's (``select_params``
        narrowed it)."""
        return f"not selected by {self.name}"

    def layer_rule(self) -> dict:
        """What the method prunes, for results.json: the rule's switches and every weight layer left dense."""
        return {
            "prune_first_layer": self.prune_first_layer,
            "prune_classifier": self.prune_classifier,
            "exclude": list(self.exclude),
            "dense_layers": list(self.dense_layers),
        }

    def begin_round(self, index: int, task: pl.LightningModule) -> None:
        """Called before each round's fit. Iterative methods prune, rewind or rebuild ``task.model`` here;
        one-round methods have nothing to do."""

    def details(self) -> dict:
        """Method-specific facts for results.json (under "sparsity"), with the layers left dense and why
        (``layer_rule``)."""
        return {"method": self.name, "distribution": self.distribution, **self.layer_rule()}

    def initial_masks(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Masks (bool, shaped like the weight) by parameter name; weights without one stay dense."""
        return {}

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        by_name = {p.name: p.param for p in self.params}
        self.masks = {name: mask.to(by_name[name].device) for name, mask in masks.items()}
        self._masked = [by_name[name] for name in self.masks]
        # Float multipliers: one fused in-place multiply is cheaper than boolean indexing per step.
        self._multipliers = [m.to(w.dtype) for m, w in zip(self.masks.values(), self._masked)]
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        if self._masked:
            torch._foreach_mul_([w.data for w in self._masked], self._multipliers)

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._masked and self._multipliers[0].device != self._masked[0].device:
            self.set_masks(self.masks)
        self.apply_masks()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.apply_masks()  # after the optimizer step: momentum and weight decay cannot revive a weight

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_densities(pl_module, self.layer_table())

    def state_dict(self) -> dict:
        return {"masks": {name: mask.cpu() for name, mask in self.masks.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.set_masks(state_dict["masks"])

    # -- reporting ----------------------------------------------------------------------------
    @torch.no_grad()
    def layer_table(self) -> list[dict]:
        rows = []
        for p, target in zip(self.params, self.target_densities):
            nonzero = int(torch.count_nonzero(p.param))
            rows.append(
                dict(
                    name=p.name,
                    shape=list(p.shape),
                    numel=p.numel,
                    nonzero=nonzero,
                    density=nonzero / p.numel,
                    target_density=target if self.masks else 1.0,
                )
            )
        return rows

    def global_sparsity(self) -> float:
        return sparsity_of(self.layer_table())

    def target_sparsity(self) -> float:
        """Sparsity the masks are meant to reach over the prunable weights (after exact rounding)."""
        total = sum(p.numel for p in self.params)
        if not total or not self.masks:
            return 0.0
        kept = sum(int(m.sum()) for m in self.masks.values()) + sum(
            p.numel for p in self.params if p.name not in self.masks
        )
        return 1.0 - kept / total

    def summary(self) -> dict:
        return {"sparsity/global": self.global_sparsity(), "sparsity/target": self.target_sparsity()}


def sparsity_of(rows: list[dict]) -> float:
    """Fraction of zeros over the layers of a layer table (rows with ``numel`` and ``nonzero``)."""
    total = sum(r["numel"] for r in rows)
    return 1.0 - sum(r["nonzero"] for r in rows) / total if total else 0.0


def log_densities(pl_module: pl.LightningModule, rows: list[dict]) -> None:
    """Log ``sparsity/global`` and ``density/<layer>`` for each row of a layer table (once per epoch).

    The values are the same on every rank (distributed.MaskAgreement checks); ``sync_dist`` makes
    Lightning reduce them under DDP rather than warn, and costs nothing on one process."""
    pl_module.log("sparsity/global", sparsity_of(rows), sync_dist=True)
    for row in rows:
        pl_module.log(f"density/{row['name']}", row["nonzero"] / row["numel"], sync_dist=True)
