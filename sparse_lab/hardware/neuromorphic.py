"""The ``neuromorphic`` target: spiking layers cost synaptic operations, real-valued layers MACs.

Energy = E_MAC x MACs (layers reading real values: the encoding layer, a classifier on pooled values)
+ E_SOP x SOPs (layers reading spikes), both prices from ``configs/hardware/neuromorphic.yaml``.
Zero weights are skipped (a pruned synapse is absent on neuromorphic hardware), so ``macs/target`` is
the effective MAC count of the real-valued layers (``executed_macs``: 0 for a layer reading spikes).
A model without spiking layers is all MACs: the estimate then equals the ``ideal`` target's. Runs on
the CPU.

``op_count`` is how operations are counted for the energy (``measure.sops.OP_COUNTS``): ``macs`` (MACs and
SOPs, the default) or ``paper_flops`` (E-3DSNN's energy script: a sparse conv's 2 x pairs x C_in x C_out
- N_out FLOPs, SOPs as firing rate x FLOPs), about twice the ``macs`` energy, to set numbers beside the
paper's table. ``energy/convention`` names it; ``energy/mac_ops`` and ``energy/sop_ops`` are the counts
priced at E_MAC and E_SOP; ``macs/target`` and ``sops/target`` stay MACs and SOPs whatever the convention.
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lab.hardware.targets import TARGETS, HardwareTarget
from sparse_lab.measure import SpikeCounter
from sparse_lab.measure.sops import check_op_count, priced_counts
from sparse_lab.protocols import SpikeInput


@TARGETS.register("neuromorphic")
class NeuromorphicTarget(HardwareTarget):
    """Spiking layers cost SOPs, real-valued layers MACs; zero weights skipped."""

    def __init__(self, *, op_count: str = "macs", **prices: float):
        super().__init__(**prices)
        self.op_count = check_op_count(op_count)

    def executed_macs(self, row) -> int:
        """A layer reading spikes executes no MAC (it accumulates: SOPs, counted by ``SpikeCounter``);
        the other layers skip their zero weights. Same rule as ``SpikeCounter``'s."""
        if isinstance(row.module, SpikeInput) and bool(row.module.spike_input):
            return 0
        return row.effective

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
        mac_ops, sop_ops = priced_counts(totals, self.op_count)
        metrics["energy/uJ"] = self.energy_uj(mac_ops, sop_ops)
        metrics["energy/convention"] = self.op_count
        metrics["energy/mac_ops"], metrics["energy/sop_ops"] = mac_ops, sop_ops
        return metrics, table
