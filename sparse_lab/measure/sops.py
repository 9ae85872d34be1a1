"""Spiking models: spike rates and synaptic operations (SOPs), counted by forward hooks.

Conventions a spiking model follows (E-3DSNN does; see ``protocols.ActivationReport`` / ``SpikeInput``):

- a spiking neuron module has ``activation_kind = "spikes"``; its output is the spike count per
  neuron (integers 0..D for integer neurons, 0/1 for binary ones);
- a weight layer whose input is spikes has ``spike_input = True``; its cost is SOPs, not MACs:
  a spike of value ``s`` reaching ``n`` target neurons is ``s * n`` accumulates. Sparse convolutions:
  active pairs x C_out weighted by the spike values (``sparse_conv.sparse_conv_sops``); linear:
  ``sum(s) * out_features``;
- every other weight layer (the encoding layer reading real-valued input, a classifier on pooled
  values) costs multiply-accumulates.

Counts are per sample. *Effective* counts skip zero weights (a pruned synapse never fires); ``dense``
counts assume every weight present. What an operation costs is the hardware target's business: the
callback prices the counts with the ``energy_uj(macs, sops)`` it is given.

Operation-count conventions (``OP_COUNTS``; the neuromorphic target's ``op_count``):

- ``macs`` (default): a MAC layer costs its multiply-accumulates, a spiking layer its SOPs as above;
- ``paper_flops``: E-3DSNN's energy script. A sparse conv's MACs M count as 2M - N_out FLOPs (N_out:
  its active output sites; ``sparse_conv.paper_flops``), its SOPs as firing rate x those FLOPs (SOPs x
  (2 - N_out / M)); a dense Linear / Conv counts 2 x MACs (the script has none of those). Energies are
  then about twice the ``macs`` ones, comparable with the paper's table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.measure.sparse_conv import sparse_conv_counts
from sparse_lab.protocols import ActivationReport, SpikeInput
from sparse_lab.spconv_layout import is_sparse_conv

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
OP_COUNTS = ("macs", "paper_flops")  # how operations are counted for energy (module docstring)


def check_op_count(op_count: str) -> str:
    if op_count not in OP_COUNTS:
        from sparse_lab.errors import UserError

        raise UserError(f"hardware.op_count must be one of {', '.join(OP_COUNTS)}, got {op_count!r}")
    return op_count


def priced_counts(totals: dict, op_count: str = "macs") -> tuple[float, float]:
    """(operations priced at E_MAC, operations priced at E_SOP) of ``SpikeCounter.totals()`` in the
    convention ``op_count``: MACs and SOPs (``macs``) or E-3DSNN's FLOPs (``paper_flops``)."""
    if check_op_count(op_count) == "macs":
        return totals["snn/macs"], totals["snn/sops"]
    return totals["snn/mac_flops"], totals["snn/sop_flops"]


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
    flops: float = 0.0  # ``effective`` in E-3DSNN's FLOP convention (``paper_flops``)


def is_spiking_neuron(module: nn.Module) -> bool:
    return isinstance(module, ActivationReport) and module.activation_kind == "spikes"


def has_spiking_layers(model: nn.Module) -> bool:
    return any(is_spiking_neuron(m) for m in model.modules())


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

    def start(self) -> SpikeCounter:
        self.stop()
        self.neurons, self.synapses, self.samples = {}, {}, 0
        self._hooks.append(self.model.register_forward_pre_hook(self._count_samples))
        for name, module in self.model.named_modules():
            if is_spiking_neuron(module):
                entry = self.neurons.setdefault(name, NeuronCount(name))
                self._hooks.append(module.register_forward_hook(self._neuron_hook(entry)))
            elif is_sparse_conv(module) or isinstance(module, WEIGHT_LAYERS):
                spikes = isinstance(module, SpikeInput) and bool(module.spike_input)
                entry = self.synapses.setdefault(name, SynapseCount(name, "sops" if spikes else "macs"))
                self._hooks.append(module.register_forward_hook(self._synapse_hook(entry, spikes)))
        return self

    def _count_samples(self, module, inputs) -> None:
        x = inputs[0]
        if isinstance(x, torch.Tensor):
            self.samples += x.shape[0]
        else:  # a spconv SparseConvTensor knows its batch size; a batch object its length
            self.samples += x.batch_size if isinstance(getattr(x, "batch_size", None), int) else len(x)

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
                dense, effective, _, flops = sparse_conv_counts(module, inputs[0], output, spikes)
            else:
                dense, effective = _linear_like_costs(module, inputs[0], output, spikes)
                flops = 2 * effective  # a FLOP per multiply and per add
            entry.dense += dense
            entry.effective += effective
            entry.flops += flops

        return hook

    def stop(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def __enter__(self) -> SpikeCounter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- results ------------------------------------------------------------------------------
    def totals(self) -> dict:
        """Per-sample totals: SOPs and MACs (dense and effective), the effective ones in E-3DSNN's FLOP
        convention (``snn/mac_flops``, ``snn/sop_flops``) and spike statistics."""
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
            "snn/mac_flops": sum(s.flops for s in self.synapses.values() if s.kind == "macs") / n,
            "snn/sop_flops": sum(s.flops for s in self.synapses.values() if s.kind == "sops") / n,
        }

    def layer_rates(self) -> dict:
        """``snn/spike_rate/<layer>``: mean spike count per neuron and timestep of each spiking layer."""
        return {f"snn/spike_rate/{c.name}": c.spikes / c.neurons for c in self.neurons.values() if c.neurons}

    def table(self) -> list[dict]:
        n = max(self.samples, 1)
        rows = [
            dict(name=c.name, kind="neuron", spike_rate=c.spikes / c.neurons, firing_fraction=c.nonzero / c.neurons)
            for c in self.neurons.values()
            if c.neurons
        ]
        rows += [
            dict(name=s.name, kind=s.kind, dense=s.dense / n, effective=s.effective / n) for s in self.synapses.values()
        ]
        return rows


class SpikeStats(pl.Callback):
    """During ``Trainer.test`` of a model with spiking layers: log spike rate (overall and per layer), SOPs
    and MACs per sample, and ``snn/energy_uJ`` = ``energy_uj(macs, sops)``, the run's target's prices (so
    it agrees with that target's ``energy/uJ``). A model without spiking layers logs nothing.

    ``op_count`` is the convention the counts are priced in (``OP_COUNTS``); by default the one of the
    target whose ``energy_uj`` this is (its ``op_count``, else ``macs``)."""

    def __init__(self, energy_uj: Callable[[float, float], float], op_count: str | None = None):
        self.energy_uj = energy_uj
        if op_count is None:
            op_count = getattr(getattr(energy_uj, "__self__", None), "op_count", "macs")
        self.op_count = check_op_count(op_count)
        self.counter: SpikeCounter | None = None

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Checked per test: a method may have rebuilt the model since the callback was made.
        self.counter = SpikeCounter(pl_module.model).start() if has_spiking_layers(pl_module.model) else None

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.counter is None:
            return
        self.counter.stop()
        totals = self.counter.totals()
        totals["snn/energy_uJ"] = self.energy_uj(*priced_counts(totals, self.op_count))
        for key, value in {**totals, **self.counter.layer_rates()}.items():
            pl_module.log(key, float(value), on_step=False, on_epoch=True)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.counter is not None:  # a failed or interrupted test leaves no hooks behind
            self.counter.stop()
