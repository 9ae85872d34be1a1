"""Which channels a structured method (MaskSparsity) may remove: discovery of channel groups.

A ``ChannelGroup`` (``sparse_lab.protocols``) is a set of channels removable together: one scale per
channel (a BatchNorm γ or a learnable gate) to rank and regularise, further scales of the same channels
(``coupled_scales``), the layers whose cost scales with the group, and a surgery function that keeps
only given channels, in place (``sparse_lab.surgery``).

Two sources, never mixed:

- **Declared**: a module that implements ``protocols.ChannelGroups`` (a ``channel_groups(prefix,
  add_gates)`` method) describes its own groups; modules below it are not searched again. Every built-in
  family declares (MobileNets, ViT/STViT attention heads and MLP units, E-3DSNN, SCTN, Delta CNN), each in
  its own file, with its exactness limits in its docstring.
- **Generic** (a model that declares nothing anywhere): Torch-Pruning's dependency graph, traced on an
  example input, finds the channels coupled through residual additions, concatenations and the like. One
  group per set of coupled BatchNorm channels: its scale is the γ of the first such BN (module order), the
  γ of every other BN over the same channels are ``coupled_scales``. Groups that would narrow the model's
  output layers (declared ``output_layer_names``, else the last weight layer) are skipped. Surgery removes
  the channels from every coupled layer and folds nothing, so a narrowed model computes what the model with
  all the group's γ at zero computes when the removed channels are 0 after their activation (ReLU with
  β ≤ 0 in every coupled BN); otherwise the constants they carried are dropped.

This module imports no model class: models plug in through the protocol.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sparse_lab.protocols import ChannelGroup
from sparse_lab.sparsity.prunable import dense_layer_names, is_weight_layer
from sparse_lab.surgery import complement, declared_groups

__all__ = ["ChannelGroup", "channel_groups", "declared_groups", "dependency_groups"]


def channel_groups(model: nn.Module, add_gates: bool = False, example_input: Any = None) -> list[ChannelGroup]:
    """Every prunable channel group of ``model``, in a deterministic order with deterministic names (the same
    for a deep copy). ``add_gates`` lets gated module kinds create their gates; ``example_input`` (batch size
    1) is needed only by the generic path, for models that declare nothing."""
    declared, groups = declared_groups(model, add_gates)
    if declared or example_input is None:
        return groups
    return dependency_groups(model, example_input)


# -- generic path: Torch-Pruning's dependency graph ------------------------------------------------------
def dependency_groups(model: nn.Module, example_input: Any) -> list[ChannelGroup]:
    """One group per set of coupled BatchNorm channels found by Torch-Pruning (see the module docstring)."""
    graph = _dependency_graph(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    protected = [model.get_submodule(n) for n in _output_layers(model)]
    groups = []
    for coupled in graph.get_all_groups(ignored_layers=protected, root_module_types=[_BatchNorm]):
        group = _coupled_bn_group(graph, coupled, names)
        if group is not None:
            groups.append(group)
    return sorted(groups, key=lambda g: order[g.name])


def _dependency_graph(model: nn.Module, example_input: Any):
    import torch_pruning as tp  # imported here: only models that declare nothing need it

    was_training = model.training  # tracing switches the model to eval mode
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, forward_fn=lambda m, x: m(x), verbose=False
            )
    finally:
        model.train(was_training)


def _output_layers(model: nn.Module) -> set[str]:
    weight_layers = [name for name, m in model.named_modules() if is_weight_layer(m)]
    return dense_layer_names(model, weight_layers)[1] if weight_layers else set()


def _coupled_bn_group(graph, coupled, names: dict[nn.Module, str]) -> ChannelGroup | None:
    """A ChannelGroup over one Torch-Pruning group: scale = the first (module order) BN whose channels are
    exactly the group's, in the same order; other such BNs are coupled scales."""
    size = len(coupled[0].idxs)  # the root (a BatchNorm): all of its channels
    aligned, layers = [], []
    for item in coupled:
        module = item.dep.target.module
        if (
            isinstance(module, _BatchNorm)
            and module.affine
            and module.num_features == size
            and list(item.idxs) == list(item.root_idxs)
            and all(module is not m for m in aligned)
        ):
            aligned.append(module)
        elif isinstance(module, nn.Module) and is_weight_layer(module) and names[module] not in layers:
            layers.append(names[module])
    if not aligned:
        return None
    position = {module: i for i, module in enumerate(names)}
    aligned.sort(key=position.__getitem__)
    layers.sort(key=list(names.values()).index)
    scale_bn = aligned[0]

    @torch.no_grad()
    def keep(idx: torch.Tensor) -> None:
        removed = complement(idx, scale_bn.num_features).tolist()
        if removed:
            pruner = graph.get_pruner_of_module(scale_bn)
            graph.get_pruning_group(scale_bn, pruner.prune_out_channels, removed).prune()

    return ChannelGroup(
        names[scale_bn],
        "bn_channel",
        scale_bn.weight,
        layers,
        keep,
        coupled_scales=tuple(bn.weight for bn in aligned[1:]),
    )
