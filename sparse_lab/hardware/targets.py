"""Hardware targets: which sparsity a target's kernels exploit and what an operation costs.

A target also picks the Lightning accelerator. Its profile of a trained model reports dense MACs,
effective MACs (every zero weight skipped), the MACs the target actually executes, an energy
estimate from those, parameters, and the measured latency on the machine the run uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.hardware.latency import measure_latency_ms
from sparse_lab.hardware.macs import count_macs, parameter_counts
from sparse_lab.registry import Registry

TARGETS: Registry["HardwareTarget"] = Registry("hardware target")


@dataclass
class HardwareTarget:
    name: str
    accelerator: str = "cpu"
    skips_zero_weights: bool = False  # True: kernels skip every zero weight (unstructured sparsity)
    energy_pj_per_mac: float = 4.6  # 45 nm 32-bit float MAC (Horowitz 2014)

    @property
    def device(self) -> torch.device:
        """Where the trained model is profiled (Lightning hands it back on the CPU after testing)."""
        return torch.device("cuda" if self.accelerator == "gpu" else "cpu")

    def profile(self, model: nn.Module, example_input) -> tuple[dict, list[dict]]:
        """Summary metrics and a per-layer MAC table of ``model`` for one sample."""
        layers = count_macs(model, example_input)
        dense = sum(r.dense for r in layers)
        effective = sum(r.effective for r in layers)
        on_target = effective if self.skips_zero_weights else dense
        total, nonzero = parameter_counts(model)
        metrics = {
            "macs/dense": dense,
            "macs/effective": effective,
            "macs/target": on_target,
            "energy/uJ": on_target * self.energy_pj_per_mac * 1e-6,
            "params/total": total,
            "params/nonzero": nonzero,
            "latency/ms": measure_latency_ms(model, example_input),
        }
        table = [dict(name=r.name, kind=r.kind, macs_dense=r.dense, macs_effective=r.effective) for r in layers]
        return metrics, table


@TARGETS.register("cpu")
def cpu(**kwargs) -> HardwareTarget:
    """Dense kernels on the CPU: zeros cost as much as any weight."""
    return HardwareTarget(name="cpu", accelerator="cpu", skips_zero_weights=False, **kwargs)


@TARGETS.register("ideal")
def ideal(**kwargs) -> HardwareTarget:
    """An upper bound: every zero weight is skipped (runs on the CPU)."""
    return HardwareTarget(name="ideal", accelerator="cpu", skips_zero_weights=True, **kwargs)


@TARGETS.register("cuda")
def cuda(**kwargs) -> HardwareTarget:
    """Dense kernels on an NVIDIA GPU: trains and measures latency there."""
    if not torch.cuda.is_available():
        raise UserError("hardware=cuda needs a CUDA GPU, and torch sees none; use hardware=cpu")
    return HardwareTarget(name="cuda", accelerator="gpu", skips_zero_weights=False, **kwargs)


def build_target(name: str, **kwargs) -> HardwareTarget:
    return TARGETS.build(name, **kwargs)


from sparse_lab.hardware import neuromorphic  # noqa: E402,F401  (registers the neuromorphic target)
