"""The one rule for which parameters are prunable.

Prunable: the weights of convolutions (1d/2d/3d, and spconv sparse convolutions) and linear layers.
Dense: biases, norms, embeddings and positional parameters; also the first such layer (it sees raw
input) and the last one (the classifier), unless a method's config says otherwise. ``exclude`` takes
regular expressions matched against parameter names, for recipes that keep more layers dense.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

DENSE_WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def is_weight_layer(module: nn.Module) -> bool:
    if isinstance(module, DENSE_WEIGHT_TYPES):
        return True
    # spconv's SparseConvolution, recognised without importing spconv on every run.
    return type(module).__module__.startswith("spconv.") and isinstance(getattr(module, "weight", None), nn.Parameter)


@dataclass(frozen=True)
class PrunableParam:
    name: str  # parameter name as in model.named_parameters(), e.g. "blocks.0.attn.qkv.weight"
    module: nn.Module
    param: nn.Parameter

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def fan_shape(self) -> tuple[int, ...]:
        """(C_out, C_in, *kernel) whatever the storage order; spconv stores [C_out, *kernel, C_in]."""
        shape = self.shape
        if type(self.module).__module__.startswith("spconv."):
            return (shape[0], shape[-1], *shape[1:-1])
        return shape

    @property
    def numel(self) -> int:
        return self.param.numel()


def prunable_parameters(
    model: nn.Module,
    prune_first_layer: bool = False,
    prune_classifier: bool = False,
    exclude: list[str] | tuple[str, ...] = (),
) -> list[PrunableParam]:
    layers = [(name, m) for name, m in model.named_modules() if is_weight_layer(m)]
    if not layers:
        return []
    skip = set()
    if not prune_first_layer:
        skip.add(layers[0][0])
    if not prune_classifier:
        skip.add(layers[-1][0])
    patterns = [re.compile(p) for p in exclude]
    chosen = []
    for name, module in layers:
        param_name = f"{name}.weight" if name else "weight"
        if name in skip or any(p.search(param_name) for p in patterns):
            continue
        chosen.append(PrunableParam(param_name, module, module.weight))
    return chosen
