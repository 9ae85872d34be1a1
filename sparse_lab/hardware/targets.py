"""Hardware targets: which sparsity a target's kernels exploit and what an operation costs.

A target also picks the Lightning accelerator. ``executed_macs(row)`` is its cost model: the MACs its
kernels execute for one row of the MAC counter (``sparse_lab.measure.count_macs``); a sparsity pattern
the target's kernels cannot exploit counts dense. Its profile of a trained model reports dense MACs,
effective MACs (every zero weight skipped), the MACs the target executes, an energy estimate from
those, parameters, and the measured latency on the machine the run uses.

Energy constants are not written here: each target's config (``configs/hardware/<name>.yaml``) gives
them with their source, so an override such as ``hardware.energy_pj_per_mac=...`` reaches every figure
the target prices (``energy/uJ`` and a spiking model's ``snn/energy_uJ``). A target of your own is a
subclass named by ``_target_:`` in a config of yours.
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.measure import count_macs, parameter_counts
from sparse_lab.registry import Registry


class HardwareTarget:
    accelerator = "cpu"  # the Lightning accelerator: "cpu" | "gpu"
    skips_zero_weights = False  # True: kernels skip every zero weight (unstructured sparsity), see executed_macs

    def __init__(self, *, energy_pj_per_mac: float | None = None, energy_pj_per_sop: float | None = None):
        # No price is built in: a config without one (a target of your own, a `~hardware.…` override) says so.
        prices = {"energy_pj_per_mac": energy_pj_per_mac, "energy_pj_per_sop": energy_pj_per_sop}
        missing = [f"hardware.{key}" for key, value in prices.items() if value is None]
        if missing:
            raise UserError(f"hardware target {self.name}: its config gives no {' or '.join(missing)} (pJ)")
        self.energy_pj_per_mac = float(energy_pj_per_mac)  # one multiply-accumulate
        self.energy_pj_per_sop = float(energy_pj_per_sop)  # one synaptic operation: a spike reaching one neuron

    @property
    def name(self) -> str:
        """The registered name (``@TARGETS.register``); a plug-in target's class name otherwise."""
        return type(self).__dict__.get("registered_name", type(self).__name__)

    def __repr__(self) -> str:
        return f"{self.name}(energy_pj_per_mac={self.energy_pj_per_mac}, energy_pj_per_sop={self.energy_pj_per_sop})"

    @property
    def device(self) -> torch.device:
        """Where the trained model is profiled (Lightning hands it back on the CPU after testing)."""
        return torch.device("cuda" if self.accelerator == "gpu" else "cpu")

    def energy_uj(self, macs: float, sops: float = 0.0) -> float:
        """Energy in µJ of ``macs`` multiply-accumulates and ``sops`` synaptic operations at this target's prices."""
        return (self.energy_pj_per_mac * macs + self.energy_pj_per_sop * sops) * 1e-6

    def executed_macs(self, row) -> int:
        """MACs this target executes for one counted layer (a ``LayerMacs`` row): dense kernels execute
        every MAC; a target whose kernels skip every zero weight executes the effective ones."""
        return row.effective if self.skips_zero_weights else row.dense

    def profile(self, model: nn.Module, example_input) -> tuple[dict, list[dict]]:
        """Summary metrics and a per-layer MAC table of ``model`` for one sample."""
        count = count_macs(model, example_input, executed=self.executed_macs)
        total, nonzero = parameter_counts(model)
        metrics = {
            "macs/dense": count.dense,
            "macs/effective": count.effective,
            "macs/target": count.target,
            "energy/uJ": self.energy_uj(count.target),
            "energy/convention": "macs",  # operations priced as MACs (neuromorphic: also "paper_flops")
            "params/total": total,
            "params/nonzero": nonzero,
        }
        return metrics, count.table()


TARGETS: Registry[HardwareTarget] = Registry("hardware target")


@TARGETS.register("cpu")
class CpuTarget(HardwareTarget):
    """Dense kernels on the CPU: zeros cost as much as any weight."""


@TARGETS.register("ideal")
class IdealTarget(HardwareTarget):
    """An upper bound: every zero weight is skipped (runs on the CPU)."""

    skips_zero_weights = True


@TARGETS.register("cuda")
class CudaTarget(HardwareTarget):
    """Dense kernels on an NVIDIA GPU: trains and measures latency there (cuBLAS / cuDNN skip no zero)."""

    accelerator = "gpu"

    def __init__(self, **prices: float):
        if not torch.cuda.is_available():
            raise UserError("hardware=cuda needs a CUDA GPU, and torch sees none; use hardware=cpu")
        super().__init__(**prices)
