"""The one place that knows spconv: how to recognise a sparse convolution and how its weight is laid out.

Recognising one never imports spconv unless the module comes from it, so runs without sparse models do
not pay spconv's import. The weight layout of spconv 2.x (``ALL_WEIGHT_IS_KRSC``, every algorithm but
the old native one) is ``[C_out, *kernel, C_in]``: output channels first, input channels *last*. Code
that reads channels (N:M groups, channel surgery, layer-wise densities, MAC counts) asks here.
"""

from __future__ import annotations

import torch
from torch import nn


def is_sparse_conv(module: nn.Module) -> bool:
    """A spconv ``SparseConvolution`` (SubMConv3d, SparseConv3d, SparseInverseConv3d, ...)."""
    if not type(module).__module__.startswith("spconv."):
        return False
    from spconv.pytorch.conv import SparseConvolution

    return isinstance(module, SparseConvolution)


def layout(module: nn.Module) -> str:
    """Axis order of a sparse convolution's weight: ``"KRSC"`` = [C_out, *kernel, C_in]; the old native
    layouts ``"RSKC"`` = [*kernel, C_out, C_in] and ``"RSCK"`` = [*kernel, C_in, C_out]."""
    from spconv.pytorch import conv

    native = getattr(module, "algo", None) is None or module.algo.name == "Native"
    if not native or getattr(conv, "ALL_WEIGHT_IS_KRSC", True):
        return "KRSC"
    return "RSCK" if getattr(conv, "FILTER_HWIO", False) else "RSKC"


def input_channel_dim(module: nn.Module) -> int:
    """The weight axis of input channels: 1 for torch convolutions and linears, spconv's own otherwise."""
    if not is_sparse_conv(module):
        return 1
    return {"KRSC": -1, "RSKC": -1, "RSCK": -2}[layout(module)]


def output_channel_dim(module: nn.Module) -> int:
    if not is_sparse_conv(module):
        return 0
    return {"KRSC": 0, "RSKC": -2, "RSCK": -1}[layout(module)]


def fan_shape(module: nn.Module, shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """A weight's shape as ``(C_out, C_in, *kernel)`` whatever the storage order."""
    shape = tuple(module.weight.shape if shape is None else shape)
    if not is_sparse_conv(module):
        return shape
    return (module.out_channels, module.in_channels, *module.kernel_size)


def kernel_major_weight(module: nn.Module) -> torch.Tensor:
    """A sparse convolution's weight as ``[K, C_out, C_in]``, ``K = prod(kernel)`` in (k_D, k_H, k_W) order."""
    w = module.weight
    kvol = w.numel() // (module.in_channels * module.out_channels)
    order = layout(module)
    if order == "KRSC":
        return w.reshape(module.out_channels, kvol, module.in_channels).transpose(0, 1)
    if order == "RSKC":
        return w.reshape(kvol, module.out_channels, module.in_channels)
    return w.reshape(kvol, module.in_channels, module.out_channels).transpose(1, 2)
