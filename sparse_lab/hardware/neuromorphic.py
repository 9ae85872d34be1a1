"""The ``neuromorphic`` target: spiking layers cost synaptic operations, real-valued layers MACs.

Energy = E_MAC x MACs (layers reading real values: the encoding layer, a classifier on pooled values)
+ E_AC x SOPs (layers reading spikes), 45 nm: 4.6 pJ / 0.9 pJ (Horowitz 2014; used by E-3DSNN and
most SNN papers). Zero weights are skipped (a pruned synapse is absent on neuromorphic hardware), so
``macs/target`` is the effective MAC count of the real-valued layers. A model without spiking layers
is all MACs: the estimate then equals the ``ideal`` target's. Runs on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparse_lab.hardware.sops import SpikeCounter
from sparse_lab.hardware.targets import TARGETS, HardwareTarget


@dataclass
class NeuromorphicTarget(HardwareTarget):
    energy_pj_per_sop: float = 0.9  # 45 nm 32-bit float add (Horowitz 2014)

    def profile(self, model: nn.Module, example_input) -> tuple[dict, list[dict]]:
        metrics, table = super().profile(model, example_input)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), SpikeCounter(model) as counter:
                model(example_input)
        finally:
            model.train(was_training)
        totals = counter.totals()
        metrics["macs/target"] = round(totals["snn/macs"])
        metrics["sops/target"] = totals["snn/sops"]
        metrics["energy/uJ"] = (self.energy_pj_per_mac * totals["snn/macs"] + self.energy_pj_per_sop * totals["snn/sops"]) * 1e-6
        return metrics, table


@TARGETS.register("neuromorphic")
def neuromorphic(**kwargs) -> NeuromorphicTarget:
    """Spiking layers cost SOPs (0.9 pJ each), real-valued layers MACs (4.6 pJ); zero weights skipped."""
    return NeuromorphicTarget(name="neuromorphic", accelerator="cpu", skips_zero_weights=True, **kwargs)
