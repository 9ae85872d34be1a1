"""N:M fine-grained structured sparsity trained with SR-STE (Zhou et al., ICLR 2021, "Learning N:M
fine-grained structured sparse neural networks from scratch").

In every group of M consecutive weights along the input dimension the N largest |w| are kept
(linear [out, in]: along ``in``; convolution [C_out, C_in, k_h, k_w]: along C_in at each kernel
position). The dense weights are trained: every forward uses W̃ = W ⊙ E with the mask E recomputed
from the current W, the backward passes the gradient straight through to W (STE) and, with SR-STE,
adds the sparse-refined term λ_w · (1 − E) ⊙ W (λ_w: ``sparsity.sr_ste_lambda``), which decays the pruned
weights and stabilises the mask. At the end of fit the final mask is applied to the weights in place, so
the model that is tested and saved is N:M sparse.

The masked weight is swapped in by a forward pre-hook per module (the Parameter is put back by a
forward hook, so ``state_dict`` and the optimizer never see the swap). Layers whose grouped dimension
is not a multiple of M (e.g. depthwise convolutions, C_in = 1) stay dense and are listed in
``details()``.

Optional progressive schedule (structure decay, in the spirit of PGF): with ``ramp_fraction`` r > 0,
N goes from M (dense) down to the target N in equal steps over the first r of training.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.errors import UserError, check_range
from sparse_lab.sparsity import METHODS
from sparse_lab.sparsity.base import SparsityMethod, log_densities
from sparse_lab.sparsity.prunable import PrunableParam
from sparse_lab.spconv_layout import input_channel_dim

# Up to this M the mask is ranked with M(M-1)/2 pairwise comparisons on a strided view (exact, ties to
# the lower index); larger M falls back to topk.
PAIRWISE_MAX_M = 8


def input_last(module: nn.Module) -> bool:
    """Whether the weight keeps input channels last (spconv's [C_out, kD, kH, kW, C_in]) rather than on axis 1."""
    dim = input_channel_dim(module)
    if dim not in (1, -1):
        raise ValueError(f"N:M groups need input channels on axis 1 or last; {type(module).__name__} has them on {dim}")
    return dim == -1


def input_size(weight: torch.Tensor, last: bool = False) -> int:
    return weight.shape[-1] if last else weight.shape[1]


def grouped_view(weight: torch.Tensor, m: int, last: bool = False) -> torch.Tensor:
    """A view [A, C_in / M, M, B] of a contiguous weight whose groups run along the input dim:
    [C_out, C_in/M, M, prod(kernel)] for torch layers, [C_out·prod(kernel), C_in/M, M, 1] for spconv."""
    if last:
        return weight.view(-1, weight.shape[-1] // m, m, 1)
    c_out, c_in = weight.shape[0], weight.shape[1]
    return weight.view(c_out, c_in // m, m, math.prod(weight.shape[2:]))


def _pairwise_rank_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Exact: rank_i = #{j < i: a_j >= a_i} + #{j > i: a_j > a_i}; keep rank < n (ties to the lower index)."""
    columns = [scores[:, :, i] for i in range(m)]  # strided views, no copy
    ranks = [torch.zeros(columns[0].shape, dtype=torch.uint8, device=scores.device) for _ in range(m)]
    for i in range(m):
        for j in range(i + 1, m):
            j_wins = torch.gt(columns[j], columns[i])
            ranks[i] += j_wins
            ranks[j] += ~j_wins
    mask = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    for i in range(m):
        mask[:, :, i].copy_(ranks[i] < n)
    return mask


def _threshold(scores: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """The n-th largest score of every group by a min/max network, where one is cheap (n = 1, 2:4)."""
    if n == 1:
        return scores.amax(dim=2, keepdim=True)
    if (n, m) == (2, 4):
        a, b, c, d = (scores[:, :, i] for i in range(4))
        hi1, lo1, hi2, lo2 = torch.maximum(a, b), torch.minimum(a, b), torch.maximum(c, d), torch.minimum(c, d)
        return torch.maximum(torch.minimum(hi1, hi2), torch.maximum(lo1, lo2)).unsqueeze(2)  # second largest
    return None


@torch.no_grad()
def nm_mask(weight: torch.Tensor, n: int, m: int, last: bool = False) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest |w| of every group of ``m`` consecutive input weights.

    Exactly ``n`` per group; ties go to the lower index within the group (deterministic). 1:M and 2:4
    use a min/max comparison network for the group threshold (a few elementwise passes), falling back
    to the exact ranking when a group has ties at its threshold; M <= 8 ranks by pairwise comparisons
    on a strided view; larger M sorts.
    """
    if weight.ndim < 2 or input_size(weight, last) % m:
        raise ValueError(f"weight {tuple(weight.shape)}: input dimension is not a multiple of {m}")
    if n >= m:
        return torch.ones_like(weight, dtype=torch.bool)
    scores = grouped_view(weight.detach().contiguous(), m, last).abs()
    threshold = _threshold(scores, n, m)
    if threshold is not None:
        mask = scores >= threshold
        if not bool((mask.sum(dim=2, dtype=torch.uint8) > n).any()):
            return mask.view(weight.shape)
    if m <= PAIRWISE_MAX_M:
        mask = _pairwise_rank_mask(scores, n, m)
    else:
        order = torch.argsort(scores, dim=2, descending=True, stable=True)
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=weight.device)
        mask.scatter_(2, order[:, :, :n], True)
    return mask.view(weight.shape)


def _float_mask_2_4(weight: torch.Tensor, last: bool) -> torch.Tensor | None:
    """``nm_mask(weight, 2, 4, last)`` as 0/1 in ``weight.dtype``, by float ops only, or None where that needs
    the exact path (a tie at a group's threshold, or a non-finite weight).

    The training forward's hot path: on CPU, comparisons into bool tensors and bool-to-float copies cost
    5-8x a float op of the same size, and every full-size temporary is a fresh allocation, so this uses one
    full-size buffer (the scores, reused for the mask) and quarter-size min/max for the threshold.
    """
    mask = _float_mask_from_scores(grouped_view(weight.detach().contiguous(), 4, last).abs())
    return None if mask is None else mask.view(weight.shape)


def _float_mask_from_scores(scores: torch.Tensor) -> torch.Tensor | None:
    """The 2:4 mask (0/1) of ``scores`` = |W| viewed [A, G, 4, B], written over ``scores``; None: exact path."""
    pairs = scores.unflatten(2, (2, 2))  # (a, b), (c, d)
    hi = torch.maximum(pairs[:, :, :, 0], pairs[:, :, :, 1])  # [A, G, 2, B]: max(a, b), max(c, d)
    lo = torch.minimum(pairs[:, :, :, 0], pairs[:, :, :, 1])
    upper, lower = torch.minimum(hi[:, :, 0], hi[:, :, 1]), torch.maximum(lo[:, :, 0], lo[:, :, 1])  # the middle two
    threshold = torch.maximum(upper, lower)  # second largest
    # Exactly two scores reach the threshold iff the middle two differ; threshold / (upper - lower) is finite
    # iff they differ and both are finite (a non-finite score makes them inf or NaN). Overflow only sends
    # near-ties to the exact path too.
    if not math.isfinite(float(torch.div(threshold, upper - lower).sum(dtype=torch.float64))):
        return None
    # score - threshold >= 0 exactly where score >= threshold (finite floats): sign + 1, capped at 1 -> 0/1.
    return torch.sub(scores, threshold.unsqueeze(2), out=scores).sign_().add_(1).clamp_(max=1)


def _batched_float_masks_2_4(weights: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """``float_nm_mask(w, 2, 4)`` of every weight in ``weights`` (contiguous, one dtype and device, groups of
    four consecutive elements in memory) with one set of ops over their concatenation, or None where any
    weight needs the exact path. Eager elementwise ops cost 5-20 µs each whatever the size at these layer
    sizes, so one pass over all layers replaces ~10 small ops per layer."""
    scores = torch.cat([w.detach().reshape(-1) for w in weights]).abs_()  # one new buffer for all of them
    mask = _float_mask_from_scores(scores.view(-1, 1, 4, 1))
    if mask is None:
        return None
    return [part.view(w.shape) for part, w in zip(mask.view(-1).split([w.numel() for w in weights]), weights)]


def float_nm_mask(weight: torch.Tensor, n: int, m: int, last: bool = False) -> torch.Tensor:
    """``nm_mask`` as 0/1 values in ``weight.dtype`` (what the forward multiplies by); identical values."""
    with torch.no_grad():
        if (n, m) == (2, 4) and weight.is_floating_point() and input_size(weight, last) % m == 0 and weight.ndim >= 2:
            mask = _float_mask_2_4(weight, last)
            if mask is not None:
                return mask
        return nm_mask(weight, n, m, last).to(weight.dtype)


class _MaskedWeight(torch.autograd.Function):
    """Forward W ⊙ E; backward: straight-through, plus λ (1 − E) ⊙ W (SR-STE) when λ > 0."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, sr_ste_lambda: float) -> torch.Tensor:
        ctx.sr_ste_lambda = sr_ste_lambda
        masked = weight * mask
        if sr_ste_lambda:
            ctx.save_for_backward(weight, masked)  # the linear/conv keeps ``masked`` alive anyway
        return masked

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.sr_ste_lambda:
            return grad, None, None
        weight, masked = ctx.saved_tensors
        # (1 − E)⊙W = W − W⊙E exactly (0 where kept, W where pruned); grad + λ·that, in that one buffer.
        pruned = torch.sub(weight, masked)
        return torch.add(grad, pruned, alpha=ctx.sr_ste_lambda, out=pruned), None, None


def sr_ste_weight(weight: torch.Tensor, mask: torch.Tensor, sr_ste_lambda: float) -> torch.Tensor:
    """W ⊙ E with the (SR-)STE backward; ``mask`` is a float or bool tensor shaped like ``weight``;
    ``sr_ste_lambda`` is the paper's λ_w (0: plain STE)."""
    return _MaskedWeight.apply(weight, mask.to(weight.dtype), float(sr_ste_lambda))


@METHODS.register("nm")
class NMSparsity(SparsityMethod):
    def __init__(
        self,
        n: int = 2,
        m: int = 4,
        sr_ste: bool = True,
        sr_ste_lambda: float = 2e-4,  # the paper's λ_w
        ramp_fraction: float = 0.0,
        prune_first_layer: bool = False,
        prune_classifier: bool = False,
        exclude: list[str] | tuple[str, ...] = (),
    ):
        n, m = int(n), int(m)
        if not (m >= 1 and 1 <= n <= m):
            raise UserError(f"sparsity.n and sparsity.m must satisfy 1 <= n <= m, got n={n}, m={m}")
        super().__init__(
            sparsity=1.0 - n / m if n < m else 0.0,
            distribution="uniform",
            prune_first_layer=prune_first_layer,
            prune_classifier=prune_classifier,
            exclude=exclude,
        )
        self.n, self.m = n, m
        self.sr_ste = bool(sr_ste)
        self.sr_ste_lambda = float(check_range("sparsity.sr_ste_lambda", sr_ste_lambda, 0.0, math.inf))
        self.ramp_fraction = check_range("sparsity.ramp_fraction", ramp_fraction, 0.0, 1.0, high_inclusive=True)
        self._indivisible: dict[str, str] = {}  # prunable weights left dense: input size not a multiple of M
        self.current_n = n if self.ramp_fraction == 0 else m
        self._handles: list = []
        self._batched: dict[int, torch.Tensor] = {}  # id(weight) -> mask, computed when the root's forward starts
        self._total_steps = 1

    # -- set-up -------------------------------------------------------------------------------
    def select_params(self, model: nn.Module) -> list[PrunableParam]:
        """Prunable layers whose input size is a multiple of M; the others stay dense and are listed.

        Dense weights are trained (no initial masks); the final N:M mask is applied at the end of fit."""
        params, self._indivisible = [], {}
        for p in super().select_params(model):
            size = input_size(p.param, input_last(p.module)) if p.param.ndim >= 2 else None
            if size is not None and size % self.m == 0:
                params.append(p)
            else:
                reason = f"input dimension {size if size is not None else p.shape} not a multiple of {self.m}"
                self._indivisible[p.name] = reason
        if not params:
            raise UserError(f"nm: no prunable layer has an input dimension divisible by m={self.m}")
        return params

    def not_selected_reason(self, name: str) -> str:
        return self._indivisible.get(name) or super().not_selected_reason(name)

    def details(self) -> dict:
        return {
            "method": self.name,
            "n": self.n,
            "m": self.m,
            "sr_ste": self.sr_ste,
            "sr_ste_lambda": self.sr_ste_lambda if self.sr_ste else 0.0,
            "ramp_fraction": self.ramp_fraction,
            "pattern": f"{self.n}:{self.m}",
            "sparsified_layers": [p.name for p in self.params],
            **self.layer_rule(),  # dense_layers: the rule's and those whose input size is not a multiple of M
        }

    def target_sparsity(self) -> float:
        """1 − N/M over the layers this method sparsifies (layers left dense are not among them)."""
        return 1.0 - self.n / self.m

    # -- forward-time masking ------------------------------------------------------------------
    def install(self, root: nn.Module | None = None) -> None:
        """Swap W ⊙ E in for every sparsified weight during forward (idempotent).

        With ``root``, the module whose forward runs the sparsified layers (the LightningModule in training), the
        2:4 masks of all layers are computed together when its forward starts, from the weights at that moment,
        and dropped when it ends: the same masks as layer by layer, for a fraction of the per-op overhead. A layer
        run outside the root's forward computes its own."""
        if self._handles:
            return
        for p in self.params:
            self._handles.append(p.module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(p.module.register_forward_hook(self._post_hook))
        if root is not None:
            self._handles.append(root.register_forward_pre_hook(self._root_pre_hook))
            self._handles.append(root.register_forward_hook(self._root_post_hook, always_call=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._batched = {}
        for p in self.params:  # a forward interrupted by an exception leaves its weight swapped out
            if "_nm_dense_weight" in p.module.__dict__:
                self._post_hook(p.module, (), None)

    def _pre_hook(self, module: nn.Module, args) -> None:
        weight = module._parameters.pop("weight")
        object.__setattr__(module, "_nm_dense_weight", weight)  # not registered: a plain attribute
        n = self.current_n
        if n >= self.m:
            masked = weight
        else:
            mask = self._batched.get(id(weight))
            if mask is None:
                mask = float_nm_mask(weight, n, self.m, input_last(module))
            masked = _MaskedWeight.apply(weight, mask, self.sr_ste_lambda if self.sr_ste else 0.0)
        object.__setattr__(module, "weight", masked)

    def _root_pre_hook(self, module: nn.Module, args) -> None:
        self._batched = {}
        if (self.current_n, self.m) != (2, 4):
            return
        batches: dict[tuple, list[torch.Tensor]] = {}
        for p in self.params:
            w = p.param
            consecutive = input_last(p.module) or math.prod(w.shape[2:]) == 1  # groups = 4 neighbours in memory
            if consecutive and w.is_floating_point() and w.is_contiguous():
                batches.setdefault((w.dtype, w.device), []).append(w)
        for weights in batches.values():
            masks = _batched_float_masks_2_4(weights) if len(weights) > 1 else None
            if masks is not None:
                self._batched.update((id(w), mask) for w, mask in zip(weights, masks))

    def _root_post_hook(self, module: nn.Module, args, output) -> None:
        self._batched = {}

    @staticmethod
    def _post_hook(module: nn.Module, args, output) -> None:
        weight = module.__dict__.pop("_nm_dense_weight")
        del module.__dict__["weight"]
        module._parameters["weight"] = weight

    def n_at(self, step: int) -> int:
        """N in effect at ``step``: the target N, or during the ramp M stepping down to N."""
        if self.ramp_fraction == 0:
            return self.n
        ramp_steps = self.ramp_fraction * self._total_steps
        progress = min(1.0, step / ramp_steps) if ramp_steps > 0 else 1.0
        levels = self.m - self.n  # number of tightenings, one N at a time
        return self.m - min(levels, int(progress * (levels + 1)))

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._total_steps = max(1, int(trainer.estimated_stepping_batches))
        self.current_n = self.n_at(trainer.global_step)
        self.install(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.current_n = self.n_at(trainer.global_step)

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The stored weights stay dense during training: report the N:M masks the forward uses.
        rows = [
            dict(
                name=p.name,
                numel=p.numel,
                nonzero=int(nm_mask(p.param, self.current_n, self.m, input_last(p.module)).sum()),
            )
            for p in self.params
        ]
        log_densities(pl_module, rows)
        pl_module.log("sparsity/nm_n", float(self.current_n), sync_dist=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.remove()
        self.current_n = self.n
        self.set_masks({p.name: nm_mask(p.param.data, self.n, self.m, input_last(p.module)) for p in self.params})

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.remove()
