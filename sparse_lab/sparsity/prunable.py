"""The one rule for which parameters are prunable.

Prunable: the weights of convolutions (1d/2d/3d, and spconv sparse convolutions) and linear layers.
Dense: biases, norms, embeddings and positional parameters; also the model's input layers (they see
raw input) and output layers (the classifier), unless a method's config says otherwise. A model names
those itself (``protocols.DenseLayers``: ``input_layer_names``, ``output_layer_names``); for a model
that does not, they are its first and last weight layer in registration order. ``exclude`` takes
regular expressions matched against parameter names, for recipes that keep more layers dense.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.protocols import DenseLayers
from sparse_lab.spconv_layout import fan_shape, is_sparse_conv

DENSE_WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, DENSE_WEIGHT_TYPES) or is_sparse_conv(module)


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
        """(C_out, C_in, *kernel) whatever the storage order (spconv's differs)."""
        return fan_shape(self.module, self.shape)

    @property
    def numel(self) -> int:
        return self.param.numel()


def prunable_parameters(
    model: nn.Module,
    prune_first_layer: bool = False,
    prune_classifier: bool = False,
    exclude: list[str] | tuple[str, ...] = (),
) -> list[PrunableParam]:
    return [
        PrunableParam(name, module, module.weight)
        for name, module, reason in _weight_layers(model, prune_first_layer, prune_classifier, exclude)
        if reason is None
    ]


def dense_weight_layers(
    model: nn.Module,
    prune_first_layer: bool = False,
    prune_classifier: bool = False,
    exclude: list[str] | tuple[str, ...] = (),
) -> list[dict]:
    """The weight layers the rule keeps dense, each as ``{"name", "shape", "reason"}`` (results.json
    ``sparsity.dense_layers``): the input layer, the classifier, or an ``exclude`` pattern."""
    return [
        {"name": name, "shape": list(module.weight.shape), "reason": reason}
        for name, module, reason in _weight_layers(model, prune_first_layer, prune_classifier, exclude)
        if reason is not None
    ]


def _weight_layers(model, prune_first_layer, prune_classifier, exclude) -> list[tuple[str, nn.Module, str | None]]:
    """(weight name, module, why the rule keeps it dense or None) of every weight layer, in order."""
    layers = [(name, m) for name, m in model.named_modules() if is_weight_layer(m)]
    if not layers:
        return []
    inputs, outputs = dense_layer_names(model, [name for name, _ in layers])
    patterns = [re.compile(p) for p in exclude]
    rows = []
    for name, module in layers:
        param_name = f"{name}.weight" if name else "weight"
        if name in inputs and not prune_first_layer:
            reason = "first layer (sparsity.prune_first_layer=false)"
        elif name in outputs and not prune_classifier:
            reason = "classifier (sparsity.prune_classifier=false)"
        else:
            hit = next((p.pattern for p in patterns if p.search(param_name)), None)
            reason = None if hit is None else f"excluded (sparsity.exclude: {hit!r})"
        rows.append((param_name, module, reason))
    return rows


def dense_layer_names(model: nn.Module, weight_layers: list[str]) -> tuple[set[str], set[str]]:
    """(input layers, output layers) of ``model``: declared, or the first and last of ``weight_layers``."""
    if not isinstance(model, DenseLayers):
        return {weight_layers[0]}, {weight_layers[-1]}
    inputs, outputs = set(model.input_layer_names), set(model.output_layer_names)
    unknown = (inputs | outputs) - set(weight_layers)
    if unknown:
        raise UserError(
            f"{type(model).__name__} declares dense layers that are not weight layers: {', '.join(sorted(unknown))}"
        )
    return inputs, outputs
