"""Prunable channel groups and physical channel removal, for structured methods (MaskSparsity).

A *channel group* is a set of channels that can be removed together without touching anything
outside the group: one scale parameter with one entry per channel (a BatchNorm γ, or a learnable gate
on models without BatchNorm) that a method ranks and regularises, the layers whose cost scales with
the group's size, and a surgery function that keeps only given channels, in place, making tensors
smaller (not masked).

Groups a model offers, found by :func:`channel_groups`:

- A model (or any submodule) may describe its own groups with a ``channel_groups(prefix, add_gates)``
  method returning ``ChannelGroup`` objects; that is the extension point for new families.
- ``BN chains`` (MobileNetV1/V2): producer conv → BN → act → [depthwise conv → BN → act] → consumer
  (1x1 conv or linear). The channels between producer and consumer feed nothing else, so they are
  removed from the producer's outputs, both BNs, the depthwise conv and the consumer's inputs at once.
  The scale is the γ of the last BN of the chain: with that γ at zero the channel's output is the
  constant act(β), which surgery folds into the consumer's bias or the next BN's running mean, so a
  narrowed model computes exactly what the model with those γ zeroed computes (eval mode).
  MobileNetV2: the expanded hidden channels of every inverted residual, the stem's outputs (they
  feed only the first block's depthwise conv when that block has no expansion and no residual) and
  the last 1x1 conv's outputs (through pooling into the classifier). Channels joined by a residual
  addition (the blocks' outputs) are left alone.
- ViT ``Attention`` (per head: its q, k, v rows of ``qkv`` and its columns of ``proj``) and ``Mlp``
  (per hidden unit: a row of ``fc1``, a column of ``fc2``), anywhere in a model (so STViT's blocks are
  covered too). These have no BatchNorm; a learnable gate (initialised to 1) multiplies each head's
  output / each hidden unit's activation and plays γ's role. Surgery folds the kept gates into the
  consumer (``proj`` / ``fc2`` columns) and drops the gate, leaving a plain, narrower ViT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class ChannelGroup:
    name: str  # where the channels live, e.g. "features.3.conv" or "blocks.0.attn"
    kind: str  # "bn_channel" | "head" | "mlp_unit": channels are ranked against channels of one kind
    scale: nn.Parameter  # one entry per channel: the γ / gate that is ranked and regularised
    layers: list[str]  # module names (relative to the model) whose MACs scale with the group's size
    keep: Callable[[torch.Tensor], None] = field(repr=False)  # keep only these channel indices, in place

    @property
    def size(self) -> int:
        return self.scale.numel()


# -- tensor surgery helpers ---------------------------------------------------------------------------
def _param(tensor: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone().contiguous(), requires_grad=like.requires_grad)


def keep_outputs(layer: nn.Module, idx: torch.Tensor) -> None:
    """Keep output channels ``idx`` of a conv or linear layer (a depthwise conv keeps its inputs too)."""
    layer.weight = _param(layer.weight.index_select(0, idx), layer.weight)
    if layer.bias is not None:
        layer.bias = _param(layer.bias.index_select(0, idx), layer.bias)
    if isinstance(layer, nn.Linear):
        layer.out_features = len(idx)
        return
    depthwise = layer.groups == layer.in_channels == layer.out_channels
    layer.out_channels = len(idx)
    if depthwise:
        layer.in_channels = layer.groups = len(idx)
    elif layer.groups != 1:
        raise ValueError(f"cannot narrow the outputs of a grouped convolution ({layer.groups} groups)")


def keep_inputs(layer: nn.Module, idx: torch.Tensor) -> None:
    """Keep input channels ``idx`` of a (non-grouped) conv or linear layer."""
    if not isinstance(layer, nn.Linear) and layer.groups != 1:
        raise ValueError(f"cannot narrow the inputs of a grouped convolution ({layer.groups} groups)")
    layer.weight = _param(layer.weight.index_select(1, idx), layer.weight)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(idx)
    else:
        layer.in_channels = len(idx)


def keep_bn(bn: nn.modules.batchnorm._BatchNorm, idx: torch.Tensor) -> None:
    if bn.affine:
        bn.weight = _param(bn.weight.index_select(0, idx), bn.weight)
        bn.bias = _param(bn.bias.index_select(0, idx), bn.bias)
    if bn.track_running_stats:
        bn.running_mean = bn.running_mean.index_select(0, idx).clone()
        bn.running_var = bn.running_var.index_select(0, idx).clone()
    bn.num_features = len(idx)


def complement(idx: torch.Tensor, size: int) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[idx.cpu()] = False
    return keep.nonzero().flatten()


# -- BatchNorm chains (MobileNets) --------------------------------------------------------------------
def _conv_bn_act(seq: nn.Sequential) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Module]:
    conv, bn = seq[0], seq[1]
    act = seq[2] if len(seq) > 2 else nn.Identity()
    return conv, bn, act


def bn_chain_group(
    name: str,
    names: tuple[str, str | None, str],  # module names of the producer conv, depthwise conv, consumer
    producer: nn.Sequential,
    depthwise: nn.Sequential | None,
    consumer: nn.Module,
    consumer_bn: nn.modules.batchnorm._BatchNorm | None = None,
) -> ChannelGroup:
    """Channels from ``producer`` (conv, BN, act) through an optional ``depthwise`` (conv, BN, act) into
    ``consumer`` (a 1x1 conv or a linear layer, after any pooling), which feed nothing else."""
    last_bn = (depthwise or producer)[1]
    layers = [n for n in names if n is not None]

    @torch.no_grad()
    def keep(idx: torch.Tensor) -> None:
        idx = idx.to(last_bn.weight.device)
        removed = complement(idx, last_bn.num_features).to(idx.device)
        _, bn, act = _conv_bn_act(depthwise or producer)
        if len(removed):
            # A removed channel (γ = 0) outputs the constant act(β): fold it into what follows.
            const = act(bn.bias.index_select(0, removed).clone())
            weight = consumer.weight.index_select(1, removed)
            if weight.ndim == 4:
                if weight.shape[2:] != (1, 1):
                    raise ValueError(f"{name}: the consumer of a channel chain must be a 1x1 conv or a linear layer")
                weight = weight[:, :, 0, 0]
            shift = weight @ const
            if consumer.bias is not None:
                consumer.bias += shift
            elif consumer_bn is not None:
                consumer_bn.running_mean -= shift
        conv, pbn, _ = _conv_bn_act(producer)
        keep_outputs(conv, idx)
        keep_bn(pbn, idx)
        if depthwise is not None:
            dconv, dbn, _ = _conv_bn_act(depthwise)
            keep_outputs(dconv, idx)
            keep_bn(dbn, idx)
        keep_inputs(consumer, idx)

    return ChannelGroup(name, "bn_channel", last_bn.weight, layers, keep)


def mobilenet_v2_groups(model: nn.Module, prefix: str = "") -> list[ChannelGroup]:
    from sparse_lab.models.mobilenet import InvertedResidual

    groups = []
    features = model.features
    p = f"{prefix}features"
    first = features[1]
    if isinstance(first, InvertedResidual) and len(first.conv) == 2 and not first.use_residual:
        # The stem's outputs feed only the first block's depthwise conv (no expansion, no residual).
        groups.append(
            bn_chain_group(f"{p}.0", (f"{p}.0.0", f"{p}.1.conv.0.0", f"{p}.1.conv.1.0"), features[0], first.conv[0], first.conv[1][0], first.conv[1][1])
        )
    for i, block in enumerate(features):
        if isinstance(block, InvertedResidual) and len(block.conv) == 3:
            b = f"{p}.{i}.conv"
            groups.append(
                bn_chain_group(b, (f"{b}.0.0", f"{b}.1.0", f"{b}.2.0"), block.conv[0], block.conv[1], block.conv[2][0], block.conv[2][1])
            )
    last = len(features) - 1
    linear = _single_linear(model, prefix)
    if not isinstance(features[last], InvertedResidual) and linear is not None:
        # The last 1x1 conv's outputs go through pooling (and dropout) into the classifier only.
        groups.append(bn_chain_group(f"{p}.{last}", (f"{p}.{last}.0", None, linear[0]), features[last], None, linear[1]))
    return groups


def _single_linear(model: nn.Module, prefix: str) -> tuple[str, nn.Linear] | None:
    """The classifier's one Linear layer (name relative to the model), if it has exactly one."""
    linear = [(n, m) for n, m in model.classifier.named_modules() if isinstance(m, nn.Linear)]
    return (f"{prefix}classifier.{linear[0][0]}", linear[0][1]) if len(linear) == 1 else None


def mobilenet_v1_groups(model: nn.Module, prefix: str = "") -> list[ChannelGroup]:
    """The output channels of the stem and of every block's pointwise conv, through the next block's
    depthwise conv into its pointwise conv (the last block's: through pooling into the classifier)."""
    features = model.features
    p = f"{prefix}features"
    groups = []
    producers = [(f"{p}.0", features[0])] + [(f"{p}.{i}.pw", features[i].pw) for i in range(1, len(features))]
    for i, (name, producer) in enumerate(producers):
        if i + 1 < len(features):
            nxt = features[i + 1]
            names = (f"{name}.0", f"{p}.{i + 1}.dw.0", f"{p}.{i + 1}.pw.0")
            groups.append(bn_chain_group(name, names, producer, nxt.dw, nxt.pw[0], nxt.pw[1]))
        elif (linear := _single_linear(model, prefix)) is not None:
            groups.append(bn_chain_group(name, (f"{name}.0", None, linear[0]), producer, None, linear[1]))
    return groups


# -- gated transformer blocks (ViT, STViT) ------------------------------------------------------------
def _gate(module: nn.Module, size: int, reference: torch.Tensor, add_gates: bool) -> nn.Parameter | None:
    if module.gate is None and add_gates:
        module.gate = nn.Parameter(torch.ones(size, dtype=reference.dtype, device=reference.device))
    return module.gate


def attention_heads_group(name: str, attn: nn.Module, add_gates: bool) -> ChannelGroup | None:
    gate = _gate(attn, attn.num_heads, attn.qkv.weight, add_gates)
    if gate is None:
        return None

    @torch.no_grad()
    def keep(idx: torch.Tensor) -> None:
        idx = idx.to(attn.qkv.weight.device)
        heads, hd = attn.num_heads, attn.head_dim
        within = torch.arange(hd, device=idx.device)
        cols = (idx[:, None] * hd + within).reshape(-1)  # the kept heads' channels of q (or k, or v)
        rows = torch.cat([part * heads * hd + cols for part in range(3)])
        keep_outputs(attn.qkv, rows)
        scale = attn.gate.index_select(0, idx).repeat_interleave(hd)
        attn.proj.weight = _param(attn.proj.weight.index_select(1, cols) * scale, attn.proj.weight)
        attn.proj.in_features = len(cols)
        attn.num_heads = len(idx)
        attn.gate = None  # folded into proj

    return ChannelGroup(name, "head", gate, [f"{name}.qkv", f"{name}.proj", name], keep)


def mlp_units_group(name: str, mlp: nn.Module, add_gates: bool) -> ChannelGroup | None:
    gate = _gate(mlp, mlp.fc1.out_features, mlp.fc1.weight, add_gates)
    if gate is None:
        return None

    @torch.no_grad()
    def keep(idx: torch.Tensor) -> None:
        idx = idx.to(mlp.fc1.weight.device)
        keep_outputs(mlp.fc1, idx)
        scale = mlp.gate.index_select(0, idx)
        mlp.fc2.weight = _param(mlp.fc2.weight.index_select(1, idx) * scale, mlp.fc2.weight)
        mlp.fc2.in_features = len(idx)
        mlp.gate = None  # folded into fc2

    return ChannelGroup(name, "mlp_unit", gate, [f"{name}.fc1", f"{name}.fc2"], keep)


def channel_groups(model: nn.Module, add_gates: bool = False) -> list[ChannelGroup]:
    """Every prunable channel group of ``model``, in a deterministic order (the same for a deep copy).

    ``add_gates`` adds a learnable gate (ones) to gated module kinds that have none yet; without it,
    only modules that already carry a gate are offered."""
    from sparse_lab.models import mobilenet, vit

    groups: list[ChannelGroup] = []
    claimed: list[str] = []  # prefixes handled by a model-level adapter

    def inside(name: str) -> bool:
        return any(c == "" or name == c or name.startswith(c + ".") for c in claimed)

    for name, module in model.named_modules():
        if inside(name):
            continue
        prefix = f"{name}." if name else ""
        found = None
        if callable(getattr(module, "channel_groups", None)):
            found = list(module.channel_groups(prefix, add_gates))
        elif isinstance(module, mobilenet.MobileNetV2):
            found = mobilenet_v2_groups(module, prefix)
        elif isinstance(module, getattr(mobilenet, "MobileNetV1", ())):
            found = mobilenet_v1_groups(module, prefix)
        elif isinstance(module, vit.Attention):
            found = [g for g in [attention_heads_group(name, module, add_gates)] if g is not None]
        elif isinstance(module, vit.Mlp):
            found = [g for g in [mlp_units_group(name, module, add_gates)] if g is not None]
        if found is not None:
            groups.extend(found)
            claimed.append(name)
    return groups
