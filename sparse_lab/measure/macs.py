"""Multiply-accumulate counting per sample, by forward hooks on one example input.

Counted: convolutions (``out_elements · C_in/groups · k``), linear layers (``out_elements · in``), spconv
sparse convolutions (``active pairs · C_in · C_out``, see ``sparse_conv.py``), and any module that
declares ``extra_macs(inputs, output)`` (``protocols.ExtraMacs``: attention matmuls), which is how
computation hidden inside a fused op is made visible. *Effective* MACs skip multiplications by zero
weights: a layer's dense MACs times its weight density (sparse convolutions: pairs per kernel offset
times that offset's nonzeros). FLOPs are twice MACs; we report MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparse_lab.measure.sparse_conv import sparse_conv_macs
from sparse_lab.protocols import ExtraMacs
from sparse_lab.spconv_layout import is_sparse_conv

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerMacs:
    name: str
    kind: str
    dense: int
    effective: int
    weight_name: str | None  # the parameter whose zeros the effective count skips, if any


def _weight_layer_macs(module: nn.Module, output: torch.Tensor) -> int | None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        per_output = module.weight[0].numel()  # C_in / groups · prod(kernel)
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return None


@torch.no_grad()
def count_macs(model: nn.Module, example_input) -> list[LayerMacs]:
    """Per-layer MACs for one sample (``example_input`` has batch size 1)."""
    rows: list[LayerMacs] = []
    hooks = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            if is_sparse_conv(module):  # exact per kernel offset: zero weights skipped where they are
                dense, effective = sparse_conv_macs(module, inputs[0], output)
                rows.append(LayerMacs(name, type(module).__name__, dense, effective, f"{name}.weight"))
                return
            dense = _weight_layer_macs(module, output)
            if dense is not None:
                weight = module.weight
                density = float(torch.count_nonzero(weight)) / weight.numel()
                rows.append(LayerMacs(name, type(module).__name__, dense, round(dense * density), f"{name}.weight"))
            elif isinstance(module, ExtraMacs):
                macs = int(module.extra_macs(inputs, output))
                rows.append(LayerMacs(name, type(module).__name__, macs, macs, None))

        return hook

    for name, module in model.named_modules():
        if _is_counted(module):
            hooks.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return rows


def _is_counted(module: nn.Module) -> bool:
    return isinstance(module, (*WEIGHT_LAYERS, ExtraMacs)) or is_sparse_conv(module)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) parameter counts."""
    with torch.no_grad():
        total = sum(p.numel() for p in model.parameters())
        nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return total, nonzero
