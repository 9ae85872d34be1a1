"""Spiking models: spike rates, synaptic operations (SOPs) and the energy estimate of SNN papers.

Conventions a spiking model follows (E-3DSNN does):

- a spiking neuron module has ``activation_kind = "spikes"``; its output is the spike count per
  neuron (integers 0..D for integer neurons, 0/1 for binary ones);
- a weight layer whose input is spikes has ``spike_input = True``; its cost is SOPs, not MACs:
  a spike of value ``s`` reaching ``n`` target neurons is ``s * n`` accumulates. Sparse convolutions:
  active pairs x C_out weighted by the spike values (``sparse_conv.sparse_conv_sops``); linear:
  ``sum(s) * out_features``;
- every other weight layer (the encoding layer reading real-valued input, a classifier on pooled
  values) costs multiply-accumulates.

Energy (45 nm, Horowitz 2014, as in the E-3DSNN paper): ``E = 4.6 pJ x MACs + 0.9 pJ x SOPs``.
Counts are per sample. *Effective* counts skip zero weights (a pruned synapse never fires); ``dense``
counts assume every weight present.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.hardware.sparse_conv import is_sparse_conv, sparse_conv_macs, sparse_conv_sops

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


@dataclass
class NeuronCount:
    name: str
    spikes: float = 0.0
    nonzero: int = 0
    neurons: int = 0  # neuron-timesteps observed


@dataclass
class SynapseCount:
    name: str
    kind: str  # sops | macs
    dense: float = 0.0
    effective: float = 0.0


def has_spiking_layers(model: nn.Module) -> bool:
    return any(getattr(m, "activation_kind", None) == "spikes" for m in model.modules())


def _linear_like_costs(module: nn.Module, x: torch.Tensor, output: torch.Tensor, spikes: bool) -> tuple[float, float]:
    """(dense, effective) SOPs (``spikes``) or MACs of a dense Linear / Conv layer."""
    nonzero_fraction = float(torch.count_nonzero(module.weight)) / module.weight.numel()
    if isinstance(module, nn.Linear):
        if spikes:  # each input spike reaches out_features neurons (those with a nonzero weight)
            dense = float(x.sum()) * module.out_features
            fan_out = (module.weight != 0).sum(0).to(x.dtype)  # [in_features]
            return dense, float((x.reshape(-1, x.shape[-1]) * fan_out).sum())
        macs = output.numel() * module.in_features
        return float(macs), macs * nonzero_fraction
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        macs = output.numel() * module.weight[0].numel()
        if spikes:  # approximate: the layer's MACs scaled by the mean spike value of its input
            scale = float(x.mean())
            return macs * scale, macs * scale * nonzero_fraction
        return float(macs), macs * nonzero_fraction
    raise TypeError(f"no synaptic-operation rule for {type(module).__name__}")


class SpikeCounter:
    """Forward hooks that accumulate spikes, SOPs and MACs of a spiking model while active."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.neurons: dict[str, NeuronCount] = {}
        self.synapses: dict[str, SynapseCount] = {}
        self.samples = 0
        self._hooks = []

    def start(self) -> "SpikeCounter":
        self.stop()
        self.neurons, self.synapses, self.samples = {}, {}, 0
        self._hooks.append(self.model.register_forward_pre_hook(self._count_samples))
        for name, module in self.model.named_modules():
            if getattr(module, "activation_kind", None) == "spikes":
                entry = self.neurons.setdefault(name, NeuronCount(name))
                self._hooks.append(module.register_forward_hook(self._neuron_hook(entry)))
            elif is_sparse_conv(module) or isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                spikes = bool(getattr(module, "spike_input", False))
                entry = self.synapses.setdefault(name, SynapseCount(name, "sops" if spikes else "macs"))
                self._hooks.append(module.register_forward_hook(self._synapse_hook(entry, spikes)))
        return self

    def _count_samples(self, module, inputs) -> None:
        x = inputs[0]
        self.samples += len(x) if not isinstance(x, torch.Tensor) else x.shape[0]

    @staticmethod
    def _neuron_hook(entry: NeuronCount):
        @torch.no_grad()
        def hook(module, inputs, output):
            entry.spikes += float(output.sum())
            entry.nonzero += int(torch.count_nonzero(output))
            entry.neurons += output.numel()

        return hook

    @staticmethod
    def _synapse_hook(entry: SynapseCount, spikes: bool):
        @torch.no_grad()
        def hook(module, inputs, output):
            if is_sparse_conv(module):
                dense, effective = (sparse_conv_sops if spikes else sparse_conv_macs)(module, inputs[0], output)
            else:
                dense, effective = _linear_like_costs(module, inputs[0], output, spikes)
            entry.dense += dense
            entry.effective += effective

        return hook

    def stop(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def __enter__(self) -> "SpikeCounter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- results ------------------------------------------------------------------------------
    def totals(self) -> dict:
        """Per-sample totals: SOPs and MACs (dense and effective), spike statistics, energy in µJ."""
        n = max(self.samples, 1)
        sops = sum(s.effective for s in self.synapses.values() if s.kind == "sops") / n
        sops_dense = sum(s.dense for s in self.synapses.values() if s.kind == "sops") / n
        macs = sum(s.effective for s in self.synapses.values() if s.kind == "macs") / n
        macs_dense = sum(s.dense for s in self.synapses.values() if s.kind == "macs") / n
        neurons = sum(c.neurons for c in self.neurons.values())
        return {
            "snn/spike_rate": sum(c.spikes for c in self.neurons.values()) / neurons if neurons else 0.0,
            "snn/firing_fraction": sum(c.nonzero for c in self.neurons.values()) / neurons if neurons else 0.0,
            "snn/sops": sops,
            "snn/sops_dense": sops_dense,
            "snn/macs": macs,
            "snn/macs_dense": macs_dense,
            "snn/energy_uJ": (E_MAC_PJ * macs + E_AC_PJ * sops) * 1e-6,
        }

    def layer_rates(self) -> dict:
        """``snn/spike_rate/<layer>``: mean spike count per neuron and timestep of each spiking layer."""
        return {f"snn/spike_rate/{c.name}": c.spikes / c.neurons for c in self.neurons.values() if c.neurons}

    def table(self) -> list[dict]:
        n = max(self.samples, 1)
        rows = [dict(name=c.name, kind="neuron", spike_rate=c.spikes / c.neurons, firing_fraction=c.nonzero / c.neurons)
                for c in self.neurons.values() if c.neurons]
        rows += [dict(name=s.name, kind=s.kind, dense=s.dense / n, effective=s.effective / n) for s in self.synapses.values()]
        return rows


class SpikeStats(pl.Callback):
    """During ``Trainer.test``: log spike rate (overall and per layer), SOPs, MACs and energy per sample."""

    def __init__(self):
        self.counter: SpikeCounter | None = None

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counter = SpikeCounter(pl_module.model).start()

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.counter is None:
            return
        self.counter.stop()
        for key, value in {**self.counter.totals(), **self.counter.layer_rates()}.items():
            pl_module.log(key, float(value), on_step=False, on_epoch=True)
