"""MaskSparsity: pruning-aware sparse regularization (Jiang et al., "Pruning-aware Sparse
Regularization for Network Pruning"; reference code CASIA-IVA-Lab/MaskSparsity).

Network slimming puts an L1 penalty on *every* BatchNorm scaling factor γ, which also shrinks the
channels that are kept. MaskSparsity first decides which channels to prune, then regularises only
those: the subgradient λ·sign(γ) is added to their γ's gradient, so they go to ~0 while every other
channel trains freely; the channels are then removed physically and the narrower network is
fine-tuned.

Two rounds (two full trainings, each with a fresh optimizer and schedule):

- round 0: ``warmup_fraction`` of the round's optimizer steps train normally; then the channels are
  chosen by |scale| rank (lowest first) until ``ratio`` of the model's MACs (``target: flops``) or of
  the prunable channels (``target: channels``) is selected, keeping at least ``min_channels`` per
  group (with ``round_to`` > 1, each group's kept count is then rounded to a multiple of it); for the rest
  of the round λ·sign(scale) is added to the selected entries' gradient;
- round 1: before training, the selected channels are removed (``task.model`` is replaced by a
  narrower copy: smaller tensors, so parameters and MACs drop), then the model is fine-tuned.

Which channels can go together is found by ``sparse_lab.sparsity.channels``: declared by each model
family (BatchNorm chains with γ as the scale in the MobileNets, E-3DSNN, SCTN and the Delta CNN; per-head
and per-hidden-unit gates in ViT/STViT blocks), or, for a model that declares nothing, traced with
Torch-Pruning's dependency graph over BatchNorm channels (then the γ of every BN over the same coupled
channels are regularised alike). A channel's score is its mean |scale| over those BNs; channels are
ranked against channels of the same kind (BN channels, attention heads, MLP units), each kind's scores
divided by their mean; with one kind (the MobileNets) that is the paper's global γ ranking.

Control, ``selection: slimming`` (network slimming, Liu et al., ICCV 2017, "Learning Efficient
Convolutional Networks through Network Slimming"): λ·sign(scale) on *every* channel group's scales from
the first step of round 0 (no warm-up: ``warmup_fraction`` is unused), and the channels are chosen only
at the end of round 0 (``begin_round(1)``, from the final scales), by the same ranking, ``ratio``,
``target``, ``min_channels`` and ``round_to``; round 1 is the same. With one kind of channel the ranking
is the paper's global threshold on |γ|. Same ``lam`` for both, so the two are compared at equal penalty
strength.

Exactness: the narrowed model computes what the model with the removed channels' scales at zero
computes (eval mode) where the constant a removed channel then outputs can be folded into its consumer
(a linear layer, a 1x1 conv) or is zero; into a spatial consumer (3x3 conv, sparse conv) a nonzero
constant cannot be folded and its contribution is dropped (``sparse_lab.surgery``, docs/methods.md).
"""

from __future__ import annotations

import copy
import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import move_data_to_device
from torch import nn

from sparse_lab.errors import IncompatibleError, UserError, check_range
from sparse_lab.measure import count_macs, parameter_counts
from sparse_lab.sparsity import METHODS
from sparse_lab.sparsity.base import SparsityMethod
from sparse_lab.sparsity.channels import ChannelGroup, channel_groups
from sparse_lab.surgery import complement

log = logging.getLogger(__name__)

TARGETS = ("flops", "channels")
SELECTIONS = ("masksparsity", "slimming")  # λ·sign(scale) on the selected channels only / on every channel


def group_scales(group: ChannelGroup) -> tuple[nn.Parameter, ...]:
    """Every per-channel scale of a group: its own and the coupled BNs' γ (regularised alike)."""
    return (group.scale, *group.coupled_scales)


def channel_scores(group: ChannelGroup) -> torch.Tensor:
    """|scale| per channel, averaged over the coupled scales (on the CPU)."""
    return torch.stack([s.detach().abs().flatten().cpu() for s in group_scales(group)]).mean(0)


def select_channels(
    groups: list[ChannelGroup],
    ratio: float,
    target: str = "flops",
    macs_per_channel: list[float] | None = None,
    total_macs: float | None = None,
    min_channels: int = 1,
) -> dict[str, torch.Tensor]:
    """Channels to prune per group (sorted index tensors), lowest normalised score (mean |scale|) first.

    ``target="channels"``: ``round(ratio · all channels)`` channels. ``target="flops"``: channels until
    their MACs (``macs_per_channel`` per group, a first-order estimate) reach ``ratio · total_macs``."""
    if target not in TARGETS:
        raise UserError(f"unknown sparsity.target {target!r}; choose one of: {', '.join(TARGETS)}")
    raw = [channel_scores(g) for g in groups]
    kinds: dict[str, list[torch.Tensor]] = {}
    for g, score in zip(groups, raw):
        kinds.setdefault(g.kind, []).append(score)
    mean = {k: float(torch.cat(v).mean()) or 1.0 for k, v in kinds.items()}
    scores = torch.cat([score / mean[g.kind] for g, score in zip(groups, raw)])
    owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
    channel = torch.cat([torch.arange(g.size) for g in groups])
    order = torch.argsort(scores, stable=True)  # ties: earlier group / lower index first

    total_channels = sum(g.size for g in groups)
    if target == "channels":
        budget, cost = round(ratio * total_channels), [1.0] * len(groups)
    else:
        if macs_per_channel is None or total_macs is None:
            raise ValueError("a FLOP target needs macs_per_channel and total_macs")
        budget, cost = ratio * total_macs, macs_per_channel
    remaining = [g.size for g in groups]
    chosen: list[list[int]] = [[] for _ in groups]
    spent = 0.0
    for flat in order.tolist():
        if spent >= budget - 1e-9:
            break
        i = int(owner[flat])
        if remaining[i] - 1 < min_channels:
            continue
        chosen[i].append(int(channel[flat]))
        remaining[i] -= 1
        spent += cost[i]
    if spent < budget - 1e-9:
        log.warning(
            "masksparsity: only %.3g of the %.3g %s asked for can be removed (min_channels=%d per group)",
            spent,
            budget,
            "MACs" if target == "flops" else "channels",
            min_channels,
        )
    return {g.name: torch.tensor(sorted(c), dtype=torch.long) for g, c in zip(groups, chosen)}


def round_kept(
    groups: list[ChannelGroup], selected: dict[str, torch.Tensor], multiple: int, min_channels: int = 1
) -> dict[str, torch.Tensor]:
    """``selected`` with each group's kept channel count rounded to the nearest multiple of ``multiple``
    (lowest scores removed first), for groups whose size is a multiple of it (others, e.g. 4 heads, as
    they are). Vectorised CPU kernels work on 8 or 16 channels at a time: MobileNetV2 at half its MACs
    realised 0.77 of the MAC cut at batch 1 with arbitrary counts, 0.82 with multiples of 8 (same MACs
    within 0.3%; docs/benchmarks.md). The total MACs removed move by at most half a multiple per group."""
    out = {}
    for g in groups:
        if multiple <= 1 or g.size % multiple:
            out[g.name] = selected[g.name]
            continue
        kept = g.size - len(selected[g.name])
        floor = -(-max(min_channels, 1) // multiple) * multiple  # at least min_channels, rounded up
        kept = min(g.size, max(floor, round(kept / multiple) * multiple))
        order = torch.argsort(channel_scores(g), stable=True)  # lowest score first, as select_channels
        out[g.name] = order[: g.size - kept].sort().values
    return out


@METHODS.register("masksparsity")
class MaskSparsity(SparsityMethod):
    rounds = 2  # round 0: warm-up + pruning-aware regularisation; round 1: physical removal + fine-tuning

    def __init__(
        self,
        ratio: float = 0.5,
        target: str = "flops",
        lam: float = 5e-4,
        warmup_fraction: float = 0.25,
        min_channels: int = 1,
        round_to: int = 1,
        selection: str = "masksparsity",
        threshold: float = 1e-2,
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
        self.ratio = check_range("sparsity.ratio", ratio, 0.0, 1.0)
        if target not in TARGETS:
            raise UserError(f"unknown sparsity.target {target!r}; choose one of: {', '.join(TARGETS)}")
        self.target = target
        if lam < 0:
            raise UserError(f"sparsity.lam must be >= 0, got {lam}")
        self.lam = float(lam)
        self.warmup_fraction = check_range("sparsity.warmup_fraction", warmup_fraction, 0.0, 1.0)
        if min_channels < 1:
            raise UserError(f"sparsity.min_channels must be >= 1, got {min_channels}")
        self.min_channels, self.threshold = int(min_channels), float(threshold)
        if round_to < 1:
            raise UserError(f"sparsity.round_to must be >= 1, got {round_to}")
        self.round_to = int(round_to)
        if selection not in SELECTIONS:
            raise UserError(f"unknown sparsity.selection {selection!r}; choose one of: {', '.join(SELECTIONS)}")
        self.selection = selection
        self.groups: list[ChannelGroup] = []
        self.selected: dict[str, torch.Tensor] = {}  # group name -> channel indices chosen for pruning
        self.round = 0
        self.pruned = False
        self._warmup_steps = 0
        self._example = None  # one input (batch size 1) for counting MACs and tracing models that declare nothing
        self._selected_pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._all_scales: list[nn.Parameter] = []  # slimming: every group's scales, each once
        self.stats: dict = {}

    # -- set-up -------------------------------------------------------------------------------
    def attach(self, model: nn.Module, seed: int = 0, example_input=None) -> None:
        self.groups = channel_groups(model, add_gates=True, example_input=self._on_model(example_input, model))
        if not self.groups:
            why = "no BatchNorm channels to trace" if example_input is not None else "no example input to trace it with"
            raise IncompatibleError(
                f"masksparsity: {type(model).__name__} offers no prunable channel groups: it "
                f"declares none (protocols.ChannelGroups) and there are {why}"
            )
        self._example = example_input
        unique = {id(s): s for g in self.groups for s in group_scales(g)}
        self._all_scales = list(unique.values())
        super().attach(model, seed, example_input)
        self.stats["channels_before"] = self._channel_counts(self.groups)

    @staticmethod
    def _channel_counts(groups: list[ChannelGroup]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for g in groups:
            counts[g.kind] = counts.get(g.kind, 0) + g.size
        return counts

    # -- round 0: choose, then regularise -----------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.round == 0:
            self._warmup_steps = round(self.warmup_fraction * int(trainer.estimated_stepping_batches))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.round != 0 or self.selected:
            return
        if self.selection == "slimming":  # chosen at the end of round 0: keep an input to count MACs with
            if self._example is None:
                self._example = self._example_input(trainer, batch, pl_module.device)
        elif trainer.global_step >= self._warmup_steps:
            self.select(pl_module.model, self._example_input(trainer, batch, pl_module.device))

    def _example_input(self, trainer: pl.Trainer, batch, device):
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "example_input"):
            example = datamodule.example_input()
        elif self._example is not None:
            example = self._example
        else:
            example = (batch[0] if isinstance(batch, (tuple, list)) else batch)[:1]
        return move_data_to_device(example, device)

    @staticmethod
    def _on_model(example, model: nn.Module):
        """``example`` on the device of ``model``'s parameters (any batch type Lightning can move)."""
        param = next(model.parameters(), None)
        return example if example is None or param is None else move_data_to_device(example, param.device)

    def select(self, model: nn.Module, example=None) -> dict[str, torch.Tensor]:
        """Choose the channels to prune from the current scales (the end of the warm-up)."""
        macs_per_channel = total = None
        if example is not None:
            self._example = example
            rows = count_macs(model, example).by_name()
            total = sum(rows.values())
            macs_per_channel = [sum(rows.get(n, 0) for n in g.layers) / g.size for g in self.groups]
            self.stats["macs_before"] = total
        elif self.target == "flops":
            raise ValueError("a FLOP target needs an example input to count MACs")
        budget_base = total
        if self.target == "flops":
            budget_base = self._reachable_flop_base(macs_per_channel, total)
        self.selected = select_channels(
            self.groups, self.ratio, self.target, macs_per_channel, budget_base, self.min_channels
        )
        self.selected = round_kept(self.groups, self.selected, self.round_to, self.min_channels)
        if macs_per_channel is not None:
            self.stats["macs_selected_estimate"] = sum(
                len(self.selected[g.name]) * c for g, c in zip(self.groups, macs_per_channel)
            )
        self._index_selected()
        return self.selected

    def _reachable_flop_base(self, macs_per_channel: list[float], total: int) -> float:
        """The MACs ``ratio`` is a fraction of: the model's, or -- when its channel groups cannot remove that
        much (SCTN: the sparse U-Net holds about a tenth of its MACs) -- the MACs of the groups' own layers,
        said in a warning and in results.json, rather than cutting every group down to ``min_channels``."""
        removable = sum((g.size - self.min_channels) * c for g, c in zip(self.groups, macs_per_channel))
        if self.ratio * total <= removable:
            return total
        in_groups = sum(g.size * c for g, c in zip(self.groups, macs_per_channel))
        self.stats["flop_target"] = {"of": "channel-group layers", "group_macs": in_groups, "model_macs": total}
        log.warning(
            "masksparsity: the channel groups can remove at most %.1f%% of the model's MACs, less than "
            "sparsity.ratio=%g; removing %g of the MACs of the grouped layers instead (%.1f%% of the model's)",
            100 * removable / total,
            self.ratio,
            self.ratio,
            100 * self.ratio * in_groups / total,
        )
        return in_groups

    def _index_selected(self) -> None:
        self._selected_pairs = [
            (scale, self.selected[g.name].to(scale.device))
            for g in self.groups
            if len(self.selected[g.name])
            for scale in group_scales(g)
        ]

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.round != 0 or self.lam == 0:
            return
        if self.selection == "slimming":  # L1 on every scale, all through round 0
            for scale in self._all_scales:
                if scale.grad is None:
                    scale.grad = torch.zeros_like(scale)
                scale.grad.add_(torch.sign(scale), alpha=self.lam)
            return
        if not self.selected:
            return
        for scale, idx in self._selected_pairs:
            if scale.grad is None:
                scale.grad = torch.zeros_like(scale)
            scale.grad.index_add_(0, idx, self.lam * torch.sign(scale.index_select(0, idx)))

    def selected_scales(self) -> torch.Tensor:
        """The selected channels' scores (mean |scale| over coupled scales)."""
        values = [channel_scores(g).index_select(0, self.selected[g.name]) for g in self.groups]
        return torch.cat(values) if values else torch.zeros(0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.round == 0 and self.selected and self.selected_scales().numel():
            pl_module.log("masksparsity/selected_scale_max", float(self.selected_scales().max()), sync_dist=True)

    # -- round 1: physical removal ------------------------------------------------------------
    def begin_round(self, index: int, task: pl.LightningModule) -> None:
        self.round = index
        if index == 1 and not self.pruned:
            if not self.selected:  # slimming, or round 0 ended before the warm-up did: choose from the scales now
                self.select(task.model, self._on_model(self._example, task.model))
            task.model = self.prune(task.model)

    def prune(self, model: nn.Module) -> nn.Module:
        """A narrower copy of ``model`` without the selected channels (gates folded away)."""
        scales = self.selected_scales()
        self.stats["selected_scale_max"] = float(scales.max()) if scales.numel() else 0.0
        self.stats["selected_below_threshold"] = int((scales < self.threshold).sum())
        self.stats["params_before"] = parameter_counts(model)[0]
        narrow = copy.deepcopy(model)
        groups = channel_groups(narrow, example_input=self._on_model(self._example, narrow))
        for g in groups:
            g.keep(complement(self.selected[g.name], g.size))
        self.stats["params_after"] = parameter_counts(narrow)[0]
        if self._example is not None:
            self.stats["macs_after"] = count_macs(narrow, self._on_model(self._example, narrow)).dense
        self.stats["channels_after"] = {
            kind: n - sum(len(self.selected[g.name]) for g in self.groups if g.kind == kind)
            for kind, n in self.stats["channels_before"].items()
        }
        self.groups = []
        self.pruned = True
        # The method's prunable weights and layer table now describe the narrow model.
        self.params = self.select_params(narrow)
        self.target_densities = [1.0] * len(self.params)
        self.set_masks({})
        log.info(
            "masksparsity (selection=%s): channels %s -> %s; parameters %d -> %d",
            self.selection,
            self.stats["channels_before"],
            self.stats["channels_after"],
            self.stats["params_before"],
            self.stats["params_after"],
        )
        return narrow

    # -- reporting ----------------------------------------------------------------------------
    def removed_channel_fraction(self) -> float:
        total = sum(self.stats["channels_before"].values())
        return sum(len(v) for v in self.selected.values()) / total if total and self.selected else 0.0

    def summary(self) -> dict:
        out = {**super().summary(), "channels/removed_fraction": self.removed_channel_fraction()}
        if "params_after" in self.stats:
            out["params/removed_fraction"] = 1.0 - self.stats["params_after"] / self.stats["params_before"]
        if "macs_after" in self.stats and self.stats.get("macs_before"):
            out["macs/removed_fraction"] = 1.0 - self.stats["macs_after"] / self.stats["macs_before"]
        return out

    def details(self) -> dict:
        return {
            "method": self.name,
            "selection": self.selection,
            "target": self.target,
            "ratio": self.ratio,
            "round_to": self.round_to,
            "lam": self.lam,
            "warmup_fraction": self.warmup_fraction,
            "pruned": self.pruned,
            **self.stats,
            "removed_per_group": {name: len(idx) for name, idx in self.selected.items()},
        }

    def state_dict(self) -> dict:
        selected = {k: v.cpu() for k, v in self.selected.items()}
        # The narrowed architecture of round 1 is not stored: begin_round(1) rebuilds it from `selected`.
        return {
            **super().state_dict(),
            "selected": selected,
            "round": self.round,
            "pruned": self.pruned,
            "stats": copy.deepcopy(self.stats),  # MACs and parameters before / after: results.json's figures
        }

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.selected = dict(state_dict.get("selected", {}))
        self.round, self.pruned = state_dict.get("round", 0), state_dict.get("pruned", False)
        self.stats = copy.deepcopy(state_dict.get("stats", self.stats))
        if self.selected and self.groups:
            self._index_selected()
