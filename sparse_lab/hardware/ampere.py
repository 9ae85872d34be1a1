"""The ``ampere_2to4`` target: NVIDIA Ampere sparse tensor cores, which run 2:4 weights at half the MACs.

A sparse tensor core takes a weight whose every group of 4 consecutive values along the reduction
(input-channel) axis holds at most 2 nonzeros, stores the 2 kept values with their indices and
executes half the multiply-accumulates of the dense GEMM (NVIDIA A100 whitepaper, 2020; Mishra et al.,
"Accelerating Sparse Deep Neural Networks", arXiv:2104.08378). So a linear or convolution layer whose
weight holds the pattern executes exactly half its dense MACs; a sparser N:M pattern (1:4, 2:8) still
runs as 2:4, at half; everything else (unstructured zeros, 4:8, depthwise convolutions whose groups have
one input channel, attention matmuls between activations, spconv sparse convolutions, transposed
convolutions) runs dense.

The groups are those of ``sparse_lab.sparsity.nm``: M consecutive weights along the input-channel axis
(``spconv_layout.input_channel_dim``) at each output channel and kernel position. A cost model evaluated
on the CPU: the run trains on the CPU, like ``ideal`` (``hardware=cuda`` trains on a GPU, dense).
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lab.hardware.targets import TARGETS, HardwareTarget
from sparse_lab.spconv_layout import input_channel_dim

# Counter rows whose weight is a GEMM operand a sparse tensor core can take: convolutions (implicit GEMM)
# and "linear" rows, i.e. every matmul with a weight operand, read as stored [out, in] the way F.linear
# takes it (nn.Linear, nn.MultiheadAttention's packed projections). Sparse convolutions (spconv), matmuls
# between activations and transposed convolutions (weight [C_in, C_out, ...]) run dense.
GEMM_KINDS = ("conv", "linear")


@torch.no_grad()
def holds_nm(weight: torch.Tensor, n: int, m: int, input_dim: int = 1) -> bool:
    """Whether every group of ``m`` consecutive weights along ``input_dim`` has at most ``n`` nonzeros."""
    if weight.ndim < 2 or weight.shape[input_dim] % m:
        return False
    nonzero = weight.detach().ne(0).movedim(input_dim, -1)  # groups run along the last axis
    per_group = nonzero.reshape(*nonzero.shape[:-1], -1, m).sum(dim=-1)
    return bool((per_group <= n).all())


@TARGETS.register("ampere_2to4")
class Ampere2to4Target(HardwareTarget):
    """2:4 weights of linear and convolution layers execute half their dense MACs; the rest dense."""

    n, m = 2, 4  # the one pattern the hardware accelerates

    def executed_macs(self, row) -> int:
        if self.runs_sparse(row):
            return row.dense // 2  # exact: the input size is a multiple of 4, so dense MACs are even
        return row.dense

    def runs_sparse(self, row) -> bool:
        """Whether the row's weight goes to a sparse tensor core (the layer's weight holds 2:4)."""
        if row.kind not in GEMM_KINDS or not isinstance(row.weight, torch.Tensor):
            return False
        if isinstance(row.module, nn.modules.conv._ConvTransposeNd):
            return False
        return holds_nm(row.weight, self.n, self.m, input_channel_dim(row.module))
