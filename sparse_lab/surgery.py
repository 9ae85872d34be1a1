"""Channel surgery: make layers physically narrower, in place (tensors get smaller; nothing is masked).

Also the walk that collects the groups a model declares (:func:`declared_groups`), shared by structured
methods and deployment (which folds leftover gates). Neutral: imports no model, method, task or data
module, so model families describe their own channel groups with these helpers (``channel_groups``
methods, ``protocols.ChannelGroups``) and structured methods apply them without knowing any model class.

Layers: torch convolutions (1d/2d/3d, depthwise for outputs), linear layers and spconv sparse
convolutions, whose weight is ``[C_out, *kernel, C_in]`` (``spconv_layout`` says which axis holds which
channels); BatchNorm of any dimension (BatchNorm1d follows sparse convolutions).

A *BN chain* (:func:`bn_chain_group`) is ``producer conv -> BN -> [depthwise conv -> BN] -> act ->
consumer``, where the channels between producer and consumer feed nothing else. Its scale is the γ of
the chain's last BN. With that γ at zero a channel outputs the constant ``act(β)``, and removing the
channel is exact (a narrowed model computes what the model with those γ at zero computes, eval mode)
in two cases:

- the consumer reads full windows of its input (a linear layer — also after pooling — a 1x1 conv, a
  conv without padding, a sparse conv with a one-voxel kernel): a constant input adds a constant to its
  output, which is folded into the consumer's bias or the running mean of the BN after it;
- otherwise (a padded spatial conv, a sparse conv with a larger kernel: what a constant contributes
  depends on how many neighbours are inside the image or active) nothing can be folded and the
  constant's contribution is dropped, which is exact only when ``act(β) == 0`` — ReLU with β ≤ 0,
  integer spikes ``round(clamp(β, 0, D)) == 0`` (β < 0.5), a Delta layer's quantizer rounding to 0.
  Else the narrowed model differs from the masked one by that contribution (fine-tuning absorbs it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from sparse_lab.protocols import ChannelGroup, ChannelGroups
from sparse_lab.spconv_layout import input_channel_dim, is_sparse_conv, output_channel_dim


# -- the groups a model declares ------------------------------------------------------------------
def declared_groups(model: nn.Module, add_gates: bool) -> tuple[bool, list[ChannelGroup]]:
    """(whether any module declares, the groups declared), walking ``named_modules()`` in order."""
    groups: list[ChannelGroup] = []
    claimed: list[str] = []  # modules that declared: their subtrees are theirs

    def inside(name: str) -> bool:
        return any(c == "" or name == c or name.startswith(c + ".") for c in claimed)

    for name, module in model.named_modules():
        if inside(name) or not isinstance(module, ChannelGroups):
            continue
        groups.extend(module.channel_groups(f"{name}." if name else "", add_gates))
        claimed.append(name)
    return bool(claimed), groups


# -- single layers ----------------------------------------------------------------------------------
def param(tensor: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    """A new parameter holding ``tensor`` (detached, contiguous), trainable like ``like``."""
    return nn.Parameter(tensor.detach().clone().contiguous(), requires_grad=like.requires_grad)


def complement(idx: torch.Tensor, size: int) -> torch.Tensor:
    """The indices in ``range(size)`` not in ``idx``, sorted."""
    keep = torch.ones(size, dtype=torch.bool)
    keep[idx.cpu()] = False
    return keep.nonzero().flatten()


def _is_depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, _ConvNd) and layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels


def _check_narrowable(layer: nn.Module) -> None:
    if isinstance(layer, _ConvNd) and layer.transposed:
        raise ValueError(f"cannot narrow a transposed convolution ({type(layer).__name__}): weight [C_in, C_out, ...]")
    if getattr(layer, "groups", 1) != 1 and not _is_depthwise(layer):
        raise ValueError(f"cannot narrow a grouped convolution ({layer.groups} groups)")


def _sync_sparse_conv(layer: nn.Module) -> None:
    if is_sparse_conv(layer):  # spconv keeps the shape it was built with next to the weight
        layer.weight_shape = list(layer.weight.shape)


def keep_outputs(layer: nn.Module, idx: torch.Tensor) -> None:
    """Keep output channels ``idx`` of a conv, sparse conv or linear layer (a depthwise conv keeps its inputs too)."""
    _check_narrowable(layer)
    layer.weight = param(layer.weight.index_select(output_channel_dim(layer) % layer.weight.ndim, idx), layer.weight)
    if layer.bias is not None:
        layer.bias = param(layer.bias.index_select(0, idx), layer.bias)
    if isinstance(layer, nn.Linear):
        layer.out_features = len(idx)
    else:
        if _is_depthwise(layer):
            layer.in_channels = layer.groups = len(idx)
        layer.out_channels = len(idx)
    _sync_sparse_conv(layer)


def keep_inputs(layer: nn.Module, idx: torch.Tensor, offset: int = 0, width: int | None = None) -> None:
    """Keep input channels ``idx`` of the ``width`` inputs starting at ``offset`` (a slice of a
    concatenation; default: all inputs from ``offset`` on); inputs outside that slice stay."""
    _check_narrowable(layer)
    if _is_depthwise(layer):
        raise ValueError("a depthwise conv's inputs are its outputs: narrow it with keep_outputs")
    total = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    width = total - offset if width is None else width
    device = layer.weight.device
    columns = torch.cat(
        [
            torch.arange(offset, device=device),
            idx.to(device) + offset,
            torch.arange(offset + width, total, device=device),
        ]
    )
    layer.weight = param(layer.weight.index_select(input_channel_dim(layer) % layer.weight.ndim, columns), layer.weight)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(columns)
    else:
        layer.in_channels = len(columns)
    _sync_sparse_conv(layer)


def keep_bn(bn: _BatchNorm, idx: torch.Tensor) -> None:
    """Keep channels ``idx`` of a BatchNorm (1d, 2d or 3d)."""
    if bn.affine:
        bn.weight = param(bn.weight.index_select(0, idx), bn.weight)
        bn.bias = param(bn.bias.index_select(0, idx), bn.bias)
    if bn.track_running_stats:
        bn.running_mean = bn.running_mean.index_select(0, idx).clone()
        bn.running_var = bn.running_var.index_select(0, idx).clone()
    bn.num_features = len(idx)


def keep_gated_inputs(layer: nn.Linear, columns: torch.Tensor, gate: torch.Tensor) -> None:
    """Keep input ``columns`` of a linear layer, each scaled by its ``gate`` value: a gate that
    multiplies a linear layer's inputs folds into its weight."""
    layer.weight = param(layer.weight.index_select(1, columns) * gate, layer.weight)
    layer.in_features = len(columns)


def head_columns(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The channels of ``heads`` in a [heads · head_dim] projection (one of q, k or v)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).reshape(-1)


def ensure_gate(module: nn.Module, size: int, like: torch.Tensor, add_gates: bool) -> nn.Parameter | None:
    """``module.gate``; with ``add_gates`` a learnable gate of ones is created where there is none."""
    if module.gate is None and add_gates:
        module.gate = nn.Parameter(torch.ones(size, dtype=like.dtype, device=like.device))
    return module.gate


# -- folding constant input channels ----------------------------------------------------------------
def reads_full_windows(layer: nn.Module) -> bool:
    """Whether every output of ``layer`` reads a whole kernel window of its input, so that a constant input
    channel adds the same constant to every output (foldable). Padded convs see zeros at the border;
    sparse convs with a kernel larger than one voxel see only each site's active neighbours."""
    if isinstance(layer, nn.Linear):
        return True
    if is_sparse_conv(layer):
        return math.prod(layer.kernel_size) == 1
    if isinstance(layer, _ConvNd) and not layer.transposed:
        if layer.padding == "same":
            return all(k == 1 for k in layer.kernel_size)
        return layer.padding == "valid" or all(p == 0 for p in layer.padding)
    return False


def channels_first_weight(layer: nn.Module) -> torch.Tensor:
    """A weight as ``[C_out, C_in, ...]`` whatever the storage order (a view)."""
    w = layer.weight
    return w.movedim((output_channel_dim(layer) % w.ndim, input_channel_dim(layer) % w.ndim), (0, 1))


@torch.no_grad()
def fold_constant_inputs(
    consumer: nn.Module, channels: torch.Tensor, values: torch.Tensor, bn: _BatchNorm | None = None
) -> None:
    """Input ``channels`` of ``consumer`` carry the constants ``values``: add what they contribute to its
    bias, or subtract it from the running mean of ``bn`` (the BatchNorm after a bias-free consumer), so the
    channels can be removed. Only for consumers that :func:`reads_full_windows`."""
    if not reads_full_windows(consumer):
        raise ValueError(f"{type(consumer).__name__} does not read full windows: a constant input cannot be folded")
    w = channels_first_weight(consumer).index_select(1, channels)
    shift = w.reshape(w.shape[0], w.shape[1], -1).sum(2) @ values.to(w.dtype)
    if consumer.bias is not None:
        consumer.bias += shift
    elif bn is not None and bn.track_running_stats:
        bn.running_mean -= shift
    else:  # (sparse convs too: sparse_lab.spconv_compat adds a bias on the CPU in eval mode)
        consumer.bias = nn.Parameter(shift.clone())


# -- BN chains --------------------------------------------------------------------------------------
@dataclass
class ConvBN:
    """A weight layer and the BatchNorm over its outputs; ``name`` is the weight layer's module name."""

    name: str
    conv: nn.Module
    bn: _BatchNorm


@dataclass
class Consumer:
    """The one layer reading a chain's channels: they are its inputs ``offset .. offset + size``."""

    name: str
    layer: nn.Module
    bn: _BatchNorm | None = None  # the BatchNorm after a bias-free consumer (takes a folded constant)
    offset: int = 0  # where the chain's channels start among the layer's inputs (a slice of a concatenation)


def bn_chain_group(
    name: str,
    producer: ConvBN,
    activation: Callable[[torch.Tensor], torch.Tensor],
    consumer: Consumer,
    depthwise: ConvBN | None = None,
) -> ChannelGroup:
    """The channels from ``producer`` through an optional ``depthwise`` conv into ``consumer``, which feed
    nothing else. ``activation`` maps the last BN's β to what a channel with γ = 0 outputs (act(β)); it is
    folded into the consumer where :func:`reads_full_windows` allows (see the module docstring)."""
    last_bn = (depthwise or producer).bn
    links = [link for link in (producer, depthwise) if link is not None]

    @torch.no_grad()
    def keep(idx: torch.Tensor) -> None:
        idx = idx.to(last_bn.weight.device)
        size = last_bn.num_features
        removed = complement(idx, size).to(idx.device)
        if len(removed) and reads_full_windows(consumer.layer):
            constants = activation(last_bn.bias.index_select(0, removed).clone())
            fold_constant_inputs(consumer.layer, removed + consumer.offset, constants, consumer.bn)
        for link in links:
            keep_outputs(link.conv, idx)
            keep_bn(link.bn, idx)
        keep_inputs(consumer.layer, idx, consumer.offset, size)

    layers = [link.name for link in links] + [consumer.name]
    return ChannelGroup(name, "bn_channel", last_bn.weight, layers, keep)
