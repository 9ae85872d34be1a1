"""What a model computes, counted or timed on the machine the run uses; no cost model (that is hardware/).

- ``macs``: multiply-accumulates per layer for one sample, counted per aten op (dense, skipping zero
  weights, and what a hardware target executes), parameters; ``ops``: the per-op formulas;
- ``sparse_conv``: a spconv sparse convolution's active pairs, its MACs and SOPs;
- ``sops``: spiking models' spike rates and synaptic operations, and the test-time callback logging them;
- ``activations``: per-layer activation sparsity, and the test-time callback logging it;
- ``latency``: forward-pass latency of several models, interleaved (torch.utils.benchmark).

Modules read what models declare (``sparse_lab.protocols``) and import no model class.
"""

from sparse_lab.measure.activations import ActivationMonitor, ActivationSparsity
from sparse_lab.measure.latency import compare_ms
from sparse_lab.measure.macs import LayerMacs, MacCount, count_macs, parameter_counts
from sparse_lab.measure.sops import SpikeCounter, SpikeStats, has_spiking_layers

__all__ = [
    "ActivationMonitor",
    "ActivationSparsity",
    "LayerMacs",
    "MacCount",
    "SpikeCounter",
    "SpikeStats",
    "count_macs",
    "has_spiking_layers",
    "compare_ms",
    "parameter_counts",
]
