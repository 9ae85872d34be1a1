"""The ``edge_xnnpack`` target: a mobile CPU running XNNPACK, whose sparse kernels skip zero weights of
1x1 convolutions only.

XNNPACK's sparse inference (Elsen et al., "Fast Sparse ConvNets", CVPR 2020) runs a 1x1 convolution as a
sparse-matrix x dense-matrix product in NCHW layout, skipping every zero weight; the other layers (the
first 3x3 convolution, depthwise convolutions, fully connected layers) keep dense kernels. XNNPACK takes
the sparse path only for a 2D 1x1 convolution without groups, padding, stride or dilation (its
``xnn_check_nchw_compatibility``). Sparse kernels pay off only when enough weights are zero: Elsen et al.
find them faster than dense from roughly 70% sparsity, so a layer below ``min_sparsity`` runs dense.
(XNNPACK itself decides per cluster of NCHW layers: sparse when more than 2/3 of the cluster's 1x1
weights are zero; the rule here decides per layer.) Runs on the CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lab.errors import UserError, check_range
from sparse_lab.hardware.targets import TARGETS, HardwareTarget


def is_sparse_pointwise(module: nn.Module) -> bool:
    """A convolution XNNPACK can run sparse: 2D, 1x1, no groups, padding, stride or dilation."""
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and module.groups == 1
        and tuple(module.stride) == (1, 1)
        and tuple(module.dilation) == (1, 1)
        and module.padding in ((0, 0), "valid", "same")  # "same" pads nothing for a 1x1 stride-1 kernel
    )


@torch.no_grad()
def weight_sparsity(weight: torch.Tensor) -> float:
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


@TARGETS.register("edge_xnnpack")
class EdgeXnnpackTarget(HardwareTarget):
    """Zero weights skipped in 1x1 convolutions at least ``min_sparsity`` sparse; everything else dense."""

    def __init__(self, *, min_sparsity: float | None = None, **prices: float):
        super().__init__(**prices)
        if min_sparsity is None:  # like the prices: the config gives it, with its source
            raise UserError(f"hardware target {self.name}: its config gives no hardware.min_sparsity")
        self.min_sparsity = check_range("hardware.min_sparsity", min_sparsity, 0.0, 1.0, high_inclusive=True)

    def executed_macs(self, row) -> int:
        if (
            isinstance(row.weight, torch.Tensor)
            and is_sparse_pointwise(row.module)
            and weight_sparsity(row.weight) >= self.min_sparsity
        ):
            return row.effective
        return row.dense

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, min_sparsity={self.min_sparsity})"
