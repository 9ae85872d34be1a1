"""Lottery ticket: iterative magnitude pruning (Frankle & Carbin, ICLR 2019, "The Lottery Ticket
Hypothesis"), with rewinding (Frankle et al., ICML 2020, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis").

``rounds`` k is the number of pruning rounds; a run trains k + 1 times (as open_lth's levels 0..k):

- round 0 trains the dense network (and saves the rewind point: θ_0 at attach, or θ_s after ``s``
  optimizer steps of round 0);
- round r = 1..k first prunes ``prune_rate`` p of the weights that survived round r − 1, by magnitude
  of the weights round r − 1 ended with (``scope: global`` ranks all prunable weights together,
  ``layerwise`` each layer on its own), then resets *every* parameter and buffer of the model to the
  rewind point (the pruned weights stay zero) and trains again, with a fresh optimizer and schedule.

Round r therefore trains at density (1 − p)^r exactly by count (``round((1 − p)^r · N)`` weights,
over all prunable weights for ``global``, per layer for ``layerwise``), and the final network has
density (1 − p)^k; ``sparsity/target`` reports the current round's target. With ``layerwise`` the
classifier (when pruned) loses ``classifier_rate_factor`` · p per round instead (Frankle & Carbin prune the
output layer at half the rate of the other fully-connected layers); ``global`` ranks it with the rest.

``reinit: true`` is the paper's random-reinitialisation control: rounds 0..k−1 are the same as the
ticket's (same seed, so the same masks), and the last round trains the ticket's final masks from a
fresh random init instead of the rewind point. The fresh init permutes each parameter tensor's initial
values at random (a new draw from the same i.i.d. initial distribution, whatever the model's init
scheme), seeded by ``reinit_seed``.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from sparse_lab.errors import UserError, check_range
from sparse_lab.sparsity import METHODS
from sparse_lab.sparsity.base import SparsityMethod
from sparse_lab.sparsity.masks import kept_count, topk_mask
from sparse_lab.sparsity.prunable import dense_layer_names, is_weight_layer

SCOPES = ("global", "layerwise")


@METHODS.register("lottery")
class LotteryTicket(SparsityMethod):
    def __init__(
        self,
        rounds: int = 5,
        prune_rate: float = 0.2,
        scope: str = "global",
        rewind_step: int = 0,
        reinit: bool = False,
        reinit_seed: int = 1,
        classifier_rate_factor: float = 1.0,
        prune_first_layer: bool = False,
        prune_classifier: bool = False,
        exclude: list[str] | tuple[str, ...] = (),
        **kwargs,
    ):
        kwargs.pop("sparsity", None)
        super().__init__(
            sparsity=0.0,
            prune_first_layer=prune_first_layer,
            prune_classifier=prune_classifier,
            exclude=exclude,
            **kwargs,
        )
        if int(rounds) != rounds or rounds < 0:
            raise UserError(f"sparsity.rounds must be a whole number >= 0, got {rounds}")
        self.prune_rounds = int(rounds)
        self.rounds = self.prune_rounds + 1  # training rounds: dense round 0, then one per pruning
        self.prune_rate = check_range("sparsity.prune_rate", prune_rate, 0.0, 1.0)
        if scope not in SCOPES:
            raise UserError(f"unknown sparsity.scope {scope!r}; choose one of: {', '.join(SCOPES)}")
        self.scope = scope
        if int(rewind_step) != rewind_step or rewind_step < 0:
            raise UserError(f"sparsity.rewind_step must be a whole number >= 0, got {rewind_step}")
        self.rewind_step, self.reinit, self.reinit_seed = int(rewind_step), bool(reinit), int(reinit_seed)
        self.classifier_rate_factor = check_range(
            "sparsity.classifier_rate_factor", classifier_rate_factor, 0.0, 1.0, high_inclusive=True
        )
        self.classifier_weights: set[str] = set()  # the prunable weights of the classifier (layerwise rate)
        self.round = 0
        self.init_state: dict[str, torch.Tensor] = {}  # θ_0: every parameter and buffer at attach
        self.rewind_state: dict[str, torch.Tensor] | None = None  # θ_s (θ_0 when rewind_step is 0)
        self.history: list[dict] = []

    # -- set-up -------------------------------------------------------------------------------
    def attach(self, model: torch.nn.Module, seed: int = 0, example_input=None) -> None:
        super().attach(model, seed, example_input)
        layers = [name for name, m in model.named_modules() if is_weight_layer(m)]
        outputs = dense_layer_names(model, layers)[1] if layers else set()
        self.classifier_weights = {p.name for p in self.params if p.name.removesuffix(".weight") in outputs}
        self.target_densities = [1.0] * len(self.params)
        self.init_state = _snapshot(model)
        if self.rewind_step == 0:
            self.rewind_state = self.init_state

    def density(self, round_index: int, name: str | None = None) -> float:
        """Target density of round ``round_index``: (1 − p)^r; for the classifier's weight ``name`` under
        ``layerwise``, (1 − f·p)^r with f = ``classifier_rate_factor``."""
        if self.scope == "layerwise" and name in self.classifier_weights:
            return (1.0 - self.classifier_rate_factor * self.prune_rate) ** round_index
        return (1.0 - self.prune_rate) ** round_index

    # -- rounds -------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.round == 0 and self.rewind_state is None and trainer.global_step == self.rewind_step:
            self.rewind_state = _snapshot(pl_module.model)

    def begin_round(self, index: int, task: pl.LightningModule) -> None:
        self.round = index
        if index == 0:
            return
        if self.rewind_state is None:
            raise UserError(
                f"sparsity.rewind_step={self.rewind_step} is past the end of round 0 "
                f"(it trained fewer steps); use a smaller rewind_step or longer training"
            )
        masks = self.prune(index)  # from the weights the previous round ended with
        if self.reinit and index == self.prune_rounds:
            state = _shuffled(self.init_state, torch.Generator().manual_seed(self.reinit_seed))
        else:
            state = self.rewind_state
        task.model.load_state_dict(state)
        self.set_masks(masks)  # zeroes the pruned weights of the rewound model

    @torch.no_grad()
    def prune(self, index: int) -> dict[str, torch.Tensor]:
        """Masks for round ``index``: the largest-magnitude surviving weights, (1 − p)^index of them."""
        density = self.density(index)
        scores = []
        for p in self.params:
            score = p.param.detach().abs().float().cpu()
            mask = self.masks.get(p.name)
            if mask is not None:
                score = torch.where(mask.cpu(), score, torch.full_like(score, -1.0))  # pruned stay pruned
            scores.append(score)
        if self.scope == "layerwise":
            masks = {
                p.name: topk_mask(s, kept_count(self.density(index, p.name), p.numel))
                for p, s in zip(self.params, scores)
            }
        else:
            flat = torch.cat([s.flatten() for s in scores])
            keep = topk_mask(flat, kept_count(density, flat.numel())).split([p.numel for p in self.params])
            masks = {p.name: k.view(p.shape) for p, k in zip(self.params, keep)}
        self.target_densities = (
            [float(masks[p.name].sum()) / p.numel for p in self.params]
            if self.scope == "global"
            else [self.density(index, p.name) for p in self.params]
        )
        return masks

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        pl_module.log("lottery/round", float(self.round), sync_dist=True)
        pl_module.log("sparsity/target", self.target_sparsity(), sync_dist=True)

    # -- reporting ----------------------------------------------------------------------------
    def summary(self) -> dict:
        return {**super().summary(), "sparsity/density": 1.0 - self.global_sparsity()}

    def details(self) -> dict:
        return {
            "method": self.name,
            "rounds": self.prune_rounds,
            "training_rounds": self.rounds,
            "prune_rate": self.prune_rate,
            "scope": self.scope,
            "rewind_step": self.rewind_step,
            "reinit": self.reinit,
            "final_target_density": self.density(self.prune_rounds),
            "classifier_rate_factor": self.classifier_rate_factor,
            **self.layer_rule(),
        }

    def state_dict(self) -> dict:
        """Masks, round, the layer targets, θ_0 and the rewind point (None until round 0 reaches
        ``rewind_step``; stored once when it is θ_0)."""
        rewind_is_init = self.rewind_state is self.init_state
        return {
            **super().state_dict(),
            "round": self.round,
            "target_densities": list(self.target_densities),
            "init_state": self.init_state,
            "rewind_is_init": rewind_is_init,
            "rewind_state": None if rewind_is_init else self.rewind_state,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.round = state_dict.get("round", self.round)
        self.target_densities = list(state_dict.get("target_densities", self.target_densities))
        self.init_state = state_dict.get("init_state", self.init_state)
        if state_dict.get("rewind_is_init", self.rewind_step == 0):
            self.rewind_state = self.init_state
        elif "rewind_state" in state_dict:
            self.rewind_state = state_dict["rewind_state"]


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _shuffled(state: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each floating-point tensor's values in a random order (buffers such as counters unchanged)."""
    out = {}
    for k, v in state.items():
        if v.is_floating_point() and v.numel() > 1:
            out[k] = v.flatten()[torch.randperm(v.numel(), generator=generator)].view_as(v)
        else:
            out[k] = v.clone()
    return out
