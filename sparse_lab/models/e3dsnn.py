"""E-3DSNN (Qiu et al. 2024, "Efficient 3D Recognition with Event-driven Spike Sparse Convolution").

A spiking sparse CNN for voxelized point clouds, on spconv:

- **Integer spiking neuron** (I-LIF style, one timestep T=1, D integer levels): the spike count is
  ``s = floor(clip(u, 0, D) + 0.5)`` of the membrane input ``u``; training passes the gradient
  straight through where ``0 < u < D`` (zero elsewhere). With T=1 there is no membrane state to carry.
- **Spike Voxel Coding** (stem): three submanifold 3x3x3 sparse convolutions with BatchNorm, spiking
  neurons between them; the first convolution reads the real-valued voxel features (these are the
  model's only multiply-accumulates apart from the classifier), every later one reads spikes.
- **Spike Sparse Convolution stages**: each stage starts with spikes -> a strided 2x2x2 sparse
  convolution (halves the grid) -> BatchNorm, followed by ``depth`` residual blocks of three
  submanifold 3x3x3 convolutions, each ``spike -> SubMConv3d -> BN`` (the first added to the block
  input, the next two added to that). Convolutions that read spikes only accumulate: their cost is
  counted in synaptic operations (SOPs), see ``sparse_lab/measure/sops.py``.
- **Head**: spikes -> mean over the active sites of each cloud -> Linear.

Sparse convolutions have ``bias=False`` (BatchNorm follows each), which also keeps them clear of
spconv's CUDA-only fused bias in eval mode. Every convolution that reads spikes is marked
``spike_input = True``.

**ANN twin** (``spiking=False``): every integer spiking neuron becomes a clipped ReLU ``clamp(u, 0, D)``
(:class:`ClippedReLU`), everything else unchanged: same convolutions, BatchNorms, residuals, pooling and
head, the same parameters (the neurons have none, so one seed builds identical weights) and the same
module names. It is the spiking neuron without its rounding -- the function whose derivative the
straight-through gradient already uses -- so the two variants differ only in whether activations are
integer spike counts, and hyper-parameters tuned for the SNN's [0, D] range carry over (a plain ReLU
would change the range too). No layer reads spikes (``spike_input = False`` everywhere), so on
``hardware=neuromorphic`` every convolution and the head cost MACs and the SOPs are 0; the MAC counts
(dense and effective) equal the SNN's, because the active sites of a sparse conv depend only on the
coordinates. The twin's neurons report ordinary (``"spatial"``) activation zeros.

Presets: ``paper_t`` is the paper's smallest model (embedding 16, channels [16, 32, 64, 128], one
block per stage: 1.87M parameters with 40 classes, as E-3DSNN-T); ``small`` (default) is sized for
2 CPU cores.
"""

from __future__ import annotations

import spconv.pytorch as sp
import torch
from torch import nn

from sparse_lab.batches import VoxelBatch
from sparse_lab.errors import UserError
from sparse_lab.models import MODELS
from sparse_lab.models.presets import resolve_preset
from sparse_lab.protocols import ChannelGroup
from sparse_lab.spconv_compat import spconv  # noqa: F401  (CPU backward + eval bias)
from sparse_lab.surgery import Consumer, ConvBN, bn_chain_group

PRESETS = {
    # Smoke tests: the small geometry at a quarter of its width.
    "tiny": dict(embed_dim=8, channels=[8, 8, 16, 16], depths=[1, 1, 1, 1]),
    # The paper's smallest model (E-3DSNN-T): 1.87M parameters (40 classes, 4 input features).
    "paper_t": dict(embed_dim=16, channels=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
    # Sized for 2 CPU cores on shapes3d's 16^3 grid: 0.68M parameters (12 classes).
    "small": dict(embed_dim=16, channels=[16, 32, 48, 64], depths=[1, 1, 1, 1]),
}


class MultiSpike(torch.autograd.Function):
    """Integer spike count with a straight-through gradient inside (0, D)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, levels: int) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.levels = levels
        return torch.floor(torch.clamp(u, 0, levels) + 0.5)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (u,) = ctx.saved_tensors
        return grad * ((u > 0) & (u < ctx.levels)).to(grad.dtype), None


class IntegerLIF(nn.Module):
    """Integer-valued spiking neuron, T=1, ``levels`` = D (spike counts 0..D)."""

    activation_kind = "spikes"  # read by sparse_lab.measure.activations and sparse_lab.measure.sops

    def __init__(self, levels: int = 4):
        super().__init__()
        if int(levels) < 1:
            raise UserError(f"model.levels must be at least 1, got {levels}")
        self.levels = int(levels)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return MultiSpike.apply(u, self.levels)

    def activation_zeros(self, inputs, output: torch.Tensor) -> tuple[int, int]:
        return int((output == 0).sum()), output.numel()

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class ClippedReLU(nn.Hardtanh):
    """The ANN twin's neuron: ``clamp(u, 0, D)``, real-valued (the integer spiking neuron without rounding)."""

    activation_kind = "spatial"  # ordinary activation zeros (protocols.ActivationReport), not spikes

    def __init__(self, levels: int = 4):
        if int(levels) < 1:
            raise UserError(f"model.levels must be at least 1, got {levels}")
        super().__init__(0.0, float(int(levels)))
        self.levels = int(levels)

    def activation_zeros(self, inputs, output: torch.Tensor) -> tuple[int, int]:
        return int((output == 0).sum()), output.numel()

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


def neuron(levels: int, spiking: bool) -> nn.Module:
    """An integer spiking neuron, or the ANN twin's clipped ReLU (``spiking=False``)."""
    return IntegerLIF(levels) if spiking else ClippedReLU(levels)


def _features(fn, x: sp.SparseConvTensor) -> sp.SparseConvTensor:
    return x.replace_feature(fn(x.features))


class SpikeConvBN(nn.Module):
    """``[spike ->] sparse conv -> BatchNorm`` on a SparseConvTensor. ``spike`` is the unit's neuron: an
    integer spiking neuron, or the ANN twin's :class:`ClippedReLU` (``spiking=False``)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        kind: str,
        indice_key: str,
        levels: int,
        spike_in: bool = True,
        spiking: bool = True,
    ):
        super().__init__()
        self.spike = neuron(levels, spiking) if spike_in else None
        if kind == "subm":
            self.conv = sp.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=indice_key)
        else:  # "down": 2x2x2, stride 2
            self.conv = sp.SparseConv3d(cin, cout, 2, stride=2, bias=False, indice_key=indice_key)
        self.conv.spike_input = spike_in and spiking  # the twin's convolutions read real values: MACs
        self.bn = nn.BatchNorm1d(cout, eps=1e-3)  # momentum 0.1: our runs are short (the reference: 0.01)

    def forward(self, x: sp.SparseConvTensor) -> sp.SparseConvTensor:
        if self.spike is not None:
            x = _features(self.spike, x)
        return _features(self.bn, self.conv(x))


def unit_chain(name: str, unit: SpikeConvBN, consumer_name: str, consumer: SpikeConvBN) -> ChannelGroup:
    """The output channels of ``unit`` when they feed only ``consumer``'s spiking neuron and sparse conv.
    Scale: ``unit``'s BN γ. A channel with γ = 0 sends the constant spike count round(clamp(β, 0, D)) into a
    3x3x3 (or 2x2x2 strided) sparse conv, whose response to a constant depends on the active neighbours of
    each site: nothing can be folded, and removal is exact when that count is 0 (β < 0.5; the ANN twin's
    clamp(β, 0, D): β <= 0)."""
    return bn_chain_group(
        name,
        ConvBN(f"{name}.conv", unit.conv, unit.bn),
        consumer.spike,
        Consumer(f"{consumer_name}.conv", consumer.conv, bn=consumer.bn),
    )


class SpikeBlock(nn.Module):
    """Residual Spike Sparse Convolution block: three spike -> SubMConv3d -> BN units."""

    def __init__(self, channels: int, indice_key: str, levels: int, spiking: bool = True):
        super().__init__()
        unit = dict(kind="subm", indice_key=indice_key, levels=levels, spiking=spiking)
        self.unit1 = SpikeConvBN(channels, channels, **unit)
        self.unit2 = SpikeConvBN(channels, channels, **unit)
        self.unit3 = SpikeConvBN(channels, channels, **unit)

    def forward(self, x: sp.SparseConvTensor) -> sp.SparseConvTensor:
        # Each sum is built on the unit's output tensor, which carries the pairs unit1 found under
        # indice_key: unit2 and unit3 reuse them instead of searching the same coordinates again.
        y = self.unit1(x)
        x = y.replace_feature(y.features + x.features)
        y = self.unit3(self.unit2(x))
        return y.replace_feature(y.features + x.features)

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]:
        """unit2 -> unit3 (``protocols.ChannelGroups``): the only channels of the block that no residual
        addition joins (see :func:`unit_chain` for exactness)."""
        return [unit_chain(f"{prefix}unit2", self.unit2, f"{prefix}unit3", self.unit3)]


class E3DSNN(nn.Module):
    input_modality = "point_cloud"
    default_data = "shapes3d"
    input_layer_names = ("stem.0.conv",)  # protocols.DenseLayers: it reads real-valued voxel features
    output_layer_names = ("head",)

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        grid_size: int,
        embed_dim: int,
        channels: list[int],
        depths: list[int],
        levels: int = 4,
        spiking: bool = True,
    ):
        super().__init__()
        channels, depths = [int(c) for c in channels], [int(d) for d in depths]
        if len(channels) != len(depths) or not channels:
            raise UserError(
                f"model.channels and model.depths need the same nonzero length, got {channels} and {depths}"
            )
        if min(channels) < 1 or min(depths) < 0 or int(embed_dim) < 1:
            raise UserError("model.embed_dim and model.channels must be positive, model.depths non-negative")
        if int(grid_size) < 2 ** len(channels):
            raise UserError(
                f"a {grid_size}^3 grid is too small for {len(channels)} stride-2 stages; "
                f"use a smaller data.voxel_size or fewer stages"
            )
        if not isinstance(spiking, bool):
            raise UserError(f"model.spiking must be true or false, got {spiking!r}")
        self.grid_size, self.levels, self.spiking = int(grid_size), int(levels), spiking
        e, n = int(embed_dim), dict(levels=levels, spiking=self.spiking)
        self.stem = nn.Sequential(
            SpikeConvBN(in_chans, e, kind="subm", indice_key="stem", spike_in=False, **n),
            SpikeConvBN(e, e, kind="subm", indice_key="stem", **n),
            SpikeConvBN(e, e, kind="subm", indice_key="stem", **n),
        )
        stages, cin = [], e
        for i, (c, d) in enumerate(zip(channels, depths)):
            stage = [SpikeConvBN(cin, c, kind="down", indice_key=f"down{i}", **n)]
            stage += [SpikeBlock(c, indice_key=f"subm{i}", **n) for _ in range(d)]
            stages.append(nn.Sequential(*stage))
            cin = c
        self.stages = nn.Sequential(*stages)
        self.head_spike = neuron(levels, self.spiking)
        self.head = nn.Linear(cin, num_classes)
        self.head.spike_input = False  # it reads the per-cloud mean of spikes (twin: of activations): real-valued
        for m in self.modules():
            if isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: VoxelBatch) -> torch.Tensor:
        t = sp.SparseConvTensor(x.features, x.coords, list(x.spatial_shape), x.batch_size)
        t = self.stages(self.stem(t))
        spikes = self.head_spike(t.features)
        batch = t.indices[:, 0].long()
        pooled = torch.zeros(x.batch_size, spikes.shape[1], device=spikes.device, dtype=spikes.dtype)
        pooled.index_add_(0, batch, spikes)
        counts = torch.bincount(batch, minlength=x.batch_size).clamp_min(1).to(spikes.dtype)
        return self.head(pooled / counts[:, None])

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]:
        """Sparse-conv BN chains whose channels feed nothing else (``protocols.ChannelGroups``): each stem
        unit -> the next, the last stem unit -> the first down conv, every residual block's unit2 -> unit3,
        and a stage without blocks: its down unit -> the next stage's (the last: -> spikes -> mean -> head,
        where the constant spike count folds into the head's bias, exactly). Channels joined by residual
        additions are left alone. Exactness of the sparse-conv chains: :func:`unit_chain`."""
        stem = [(f"{prefix}stem.{i}", unit) for i, unit in enumerate(self.stem)]
        downs = [(f"{prefix}stages.{i}.0", stage[0]) for i, stage in enumerate(self.stages)]
        groups = [unit_chain(*a, *b) for a, b in zip(stem, stem[1:] + downs[:1])]
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage[1:], start=1):
                groups += block.channel_groups(f"{prefix}stages.{i}.{j}.", add_gates)
            if len(stage) > 1:
                continue
            name, unit = downs[i]
            if i + 1 < len(downs):
                groups.append(unit_chain(name, unit, *downs[i + 1]))
            else:
                groups.append(
                    bn_chain_group(
                        name,
                        ConvBN(f"{name}.conv", unit.conv, unit.bn),
                        self.head_spike,
                        Consumer(f"{prefix}head", self.head),
                    )
                )
        return groups


@MODELS.register("e3dsnn")
def e3dsnn(
    num_classes: int,
    in_chans: int,
    grid_size: int,
    preset: str | None = "small",
    embed_dim: int | None = None,
    channels: list[int] | None = None,
    depths: list[int] | None = None,
    levels: int = 4,
    spiking: bool = True,
    **unused,
) -> E3DSNN:
    if unused:
        raise UserError(f"model e3dsnn got unknown options: {', '.join(sorted(unused))}")
    geometry = resolve_preset(PRESETS, preset, dict(embed_dim=embed_dim, channels=channels, depths=depths))
    return E3DSNN(
        num_classes=num_classes, in_chans=in_chans, grid_size=grid_size, levels=levels, spiking=spiking, **geometry
    )


e3dsnn.input_modality = E3DSNN.input_modality
e3dsnn.default_data = E3DSNN.default_data
