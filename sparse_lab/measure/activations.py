"""Activation sparsity: per-layer fraction of zero activations, measured by forward hooks.

Measured layers:

- ``nn.ReLU`` / ``nn.ReLU6``: fraction of outputs exactly 0 (*spatial* sparsity);
- ``nn.GELU``: fraction of outputs with ``|a| <= gelu_threshold`` (GELU is almost never exactly zero;
  *ours*: 1e-2 by default, i.e. inputs below about -2.4 or with |x| < 0.02);
- any module that declares ``activation_kind`` and ``activation_zeros(inputs, output) -> (zeros, total)``
  (``protocols.ActivationReport``: ``"temporal"`` for Delta Activation Layers, ``"spikes"`` for spiking
  neurons), which is how layers whose sparsity is not "output == 0" report it.

``ActivationMonitor`` installs the hooks only while measuring (a context manager) and removes every
one of them afterwards; ``ActivationSparsity`` is the Lightning callback that measures during
``Trainer.test``, so the figures are on the test set at no extra pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.protocols import ActivationReport

ZERO_OUTPUT_TYPES = (nn.ReLU, nn.ReLU6)


@dataclass
class LayerCount:
    name: str
    kind: str  # spatial | temporal | spikes
    module_type: str
    zeros: int = 0
    total: int = 0

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.total if self.total else 0.0


class ActivationMonitor:
    def __init__(self, model: nn.Module, gelu_threshold: float = 1e-2):
        self.model = model
        self.gelu_threshold = float(gelu_threshold)
        self.counts: dict[str, LayerCount] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    # -- which layers, and how each counts its zeros -----------------------------------------
    def _counter(self, module: nn.Module):
        if isinstance(module, ActivationReport):
            return module.activation_kind, module.activation_zeros
        if isinstance(module, ZERO_OUTPUT_TYPES):
            return "spatial", lambda inputs, output: (int((output == 0).sum()), output.numel())
        if isinstance(module, nn.GELU):
            thr = self.gelu_threshold
            return "spatial", lambda inputs, output: (int((output.abs() <= thr).sum()), output.numel())
        return None

    def start(self) -> ActivationMonitor:
        self.stop()
        self.counts = {}
        for name, module in self.model.named_modules():
            counter = self._counter(module)
            if counter is None:
                continue
            kind, count = counter
            entry = self.counts.setdefault(name, LayerCount(name, kind, type(module).__name__))
            self._hooks.append(module.register_forward_hook(self._make_hook(entry, count)))
        return self

    @staticmethod
    def _make_hook(entry: LayerCount, count):
        @torch.no_grad()
        def hook(module, inputs, output):
            zeros, total = count(inputs, output)
            entry.zeros += int(zeros)
            entry.total += int(total)

        return hook

    def stop(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def __enter__(self) -> ActivationMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- results ------------------------------------------------------------------------------
    def table(self) -> list[dict]:
        return [
            dict(
                name=c.name,
                kind=c.kind,
                type=c.module_type,
                zero_fraction=c.zero_fraction,
                zeros=c.zeros,
                total=c.total,
            )
            for c in self.counts.values()
            if c.total
        ]

    def summary(self) -> dict:
        """Per kind: the mean over layers of the zero fraction (``activations/mean_zero_fraction``,
        ``activations/temporal_mean_zero_fraction``, ``activations/spike_mean_zero_fraction``) and the
        fraction over all their elements (``..._overall_zero_fraction``)."""
        metrics = {}
        rows = self.table()
        for kind, prefix in (("spatial", ""), ("temporal", "temporal_"), ("spikes", "spike_")):
            chosen = [r for r in rows if r["kind"] == kind]
            if chosen:
                zeros, total = sum(r["zeros"] for r in chosen), sum(r["total"] for r in chosen)
                mean = sum(r["zero_fraction"] for r in chosen) / len(chosen)
                metrics[f"activations/{prefix}mean_zero_fraction"] = mean
                metrics[f"activations/{prefix}overall_zero_fraction"] = zeros / total
        metrics["activations/layers"] = len(rows)
        return metrics


class ActivationSparsity(pl.Callback):
    """Measure activation sparsity of ``pl_module.model`` during every ``Trainer.test``."""

    def __init__(self, gelu_threshold: float = 1e-2):
        self.gelu_threshold = gelu_threshold
        self.monitor: ActivationMonitor | None = None

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.monitor = ActivationMonitor(pl_module.model, self.gelu_threshold).start()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.monitor is not None:  # a failed or interrupted test leaves no hooks behind
            self.monitor.stop()

    def summary(self) -> dict:
        return self.monitor.summary() if self.monitor else {}

    def table(self) -> list[dict]:
        return self.monitor.table() if self.monitor else []
