"""Delta Activation Layer (Yousefzadeh & Sifalakis 2021) and a frame-wise video classifier using it.

On a sequence a_1..a_T the layer passes on the quantized change of its input since the previous
frame, Δ_t = Q(a_t) − Q(a_{t−1}) with Δ_1 = Q(a_1), where Q rounds to a multiple of ``step`` (a
straight-through estimator in the backward pass). The next weight layer, wrapped in ``Accumulate``,
computes on Δ (what a delta-network accelerator executes: zeros cost nothing) and sums its outputs
over time, so y_t = W·Σ_{s≤t} Δ_s + b = W·Q(a_t) + b: the network's function is unchanged (up to
quantization) while its inputs become temporally sparse. During training the layer keeps the mean
|Δ| of the last forward; the model's ``auxiliary_losses`` add λ·Σ mean|Δ| (L1 as a proxy of L0),
which the classification task adds to the loss.

Temporal sparsity = fraction of zero Δ. With ``enabled=False`` the layer is the identity (the
baseline network) but still reports the Δ it would send with the same quantizer, so both runs log
the same metric.

``delta_cnn`` is a frame-wise CNN: 3x3 convolutions applied to every frame (``Conv3d`` with a
temporal kernel of 1, so per-sample MAC counts cover the whole clip), per-frame logits, averaged
over frames. A Delta Activation Layer follows every ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.models import MODELS
from sparse_lab.protocols import ChannelGroup
from sparse_lab.surgery import Consumer, ConvBN, bn_chain_group


def quantize(x: torch.Tensor, step: float) -> torch.Tensor:
    """Round to a multiple of ``step``; straight-through gradient."""
    return x + (torch.round(x / step) * step - x).detach()


def temporal_deltas(x: torch.Tensor, step: float, time_dim: int) -> torch.Tensor:
    q = quantize(x, step)
    first = q.narrow(time_dim, 0, 1)
    rest = q.narrow(time_dim, 1, q.shape[time_dim] - 1) - q.narrow(time_dim, 0, q.shape[time_dim] - 1)
    return torch.cat([first, rest], dim=time_dim)


class DeltaActivation(nn.Module):
    """Δ_t = Q(a_t) − Q(a_{t−1}), Δ_1 = Q(a_1), along ``time_dim`` of a sequence tensor."""

    activation_kind = "temporal"

    def __init__(self, step: float = 0.125, time_dim: int = 2, enabled: bool = True):
        super().__init__()
        if step <= 0:
            raise UserError(f"model.delta_step must be positive, got {step}")
        self.step, self.time_dim, self.enabled = float(step), time_dim, bool(enabled)
        self.l1: torch.Tensor | None = None  # mean |Δ| of the last training forward

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return a
        delta = temporal_deltas(a, self.step, self.time_dim)
        self.l1 = delta.abs().mean() if self.training else None
        return delta

    def activation_zeros(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> tuple[int, int]:
        """Zero Δ entries (for the disabled layer: of the Δ it would send)."""
        delta = output if self.enabled else temporal_deltas(inputs[0], self.step, self.time_dim)
        return int((delta == 0).sum()), delta.numel()

    def extra_repr(self) -> str:
        return f"step={self.step}, time_dim={self.time_dim}, enabled={self.enabled}"


class Accumulate(nn.Module):
    """Apply a weight layer to the Δ stream and sum its outputs over time (bias once per frame)."""

    def __init__(self, layer: nn.Module, time_dim: int, enabled: bool = True):
        super().__init__()
        self.layer, self.time_dim, self.enabled = layer, time_dim, bool(enabled)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        y = self.layer(delta)
        if not self.enabled:
            return y
        bias = getattr(self.layer, "bias", None)
        if bias is None:
            return y.cumsum(self.time_dim)
        shape = [1] * y.ndim
        channel_dim = 1 if isinstance(self.layer, nn.Conv3d) else y.ndim - 1
        shape[channel_dim] = -1
        b = bias.view(shape)
        return (y - b).cumsum(self.time_dim) + b


def frame_conv(cin: int, cout: int, stride: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)


class DeltaCNN(nn.Module):
    """Frame-wise CNN on [B, T, C, H, W] clips; Delta Activation Layers after every ReLU."""

    input_modality = "video"
    input_layer_names = ("features.0",)  # protocols.DenseLayers
    output_layer_names = ("classifier.layer",)

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        in_chans: int = 1,
        num_frames: int = 8,
        channels: tuple[int, ...] = (8, 16, 32, 32),
        delta: bool = True,
        delta_step: float = 0.125,
        delta_penalty: float = 0.15,
    ):
        super().__init__()
        if not channels:
            raise UserError("model.channels must list at least one stage width")
        if delta_penalty < 0:
            raise UserError(f"model.delta_penalty must be >= 0, got {delta_penalty}")
        self.delta_enabled, self.delta_penalty = bool(delta), float(delta_penalty)
        layers: list[nn.Module] = []
        cin = in_chans
        for i, cout in enumerate(channels):
            conv = frame_conv(cin, cout, stride=1 if i == 0 else 2)
            # The first conv sees raw frames; every later one receives the Δ of the previous stage.
            layers += [
                conv if i == 0 else Accumulate(conv, time_dim=2, enabled=delta),
                nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True),
                DeltaActivation(delta_step, time_dim=2, enabled=delta),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = Accumulate(nn.Linear(cin, num_classes), time_dim=1, enabled=delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.transpose(1, 2))  # [B, C, T, H, W]
        # Spatial mean is linear, so it commutes with the accumulation of the Δ stream.
        frames = x.mean(dim=(3, 4)).transpose(1, 2)  # [B, T, C]
        return self.classifier(frames).mean(dim=1)  # per-frame logits, averaged over the clip

    def delta_layers(self) -> list[DeltaActivation]:
        return [m for m in self.modules() if isinstance(m, DeltaActivation)]

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]:
        """Each stage's channels (``protocols.ChannelGroups``): conv -> BN -> ReLU -> Delta -> the next stage's
        ``Accumulate(conv)``, the last stage's -> spatial mean -> the classifier's ``Accumulate(Linear)``.
        Scale: the stage's BN γ. A channel with γ = 0 sends Δ_1 = Q(ReLU(β)) and zeros after it, which the
        accumulation turns into the constant Q(ReLU(β)) (ReLU(β) with Delta layers off). The classifier folds
        it into its bias (exact); a next stage's padded 3x3 conv cannot, so removal there is exact when
        Q(ReLU(β)) is 0 (β < delta_step / 2; β ≤ 0 with Delta layers off)."""
        stages = [self.features[i : i + 4] for i in range(0, len(self.features), 4)]
        names = [f"{prefix}features.{4 * i}" + (".layer" if i else "") for i in range(len(stages))]
        readers = [Consumer(name, stage[0].layer, bn=stage[1]) for name, stage in zip(names[1:], stages[1:])]
        readers.append(Consumer(f"{prefix}classifier.layer", self.classifier.layer))
        groups = []
        for i, ((weight, bn, relu, delta), name, reader) in enumerate(zip(stages, names, readers)):
            conv = weight.layer if i else weight

            def constant(beta: torch.Tensor, relu=relu, delta=delta) -> torch.Tensor:
                return quantize(relu(beta), delta.step) if delta.enabled else relu(beta)

            groups.append(bn_chain_group(f"{prefix}features.{4 * i}", ConvBN(name, conv, bn), constant, reader))
        return groups

    def auxiliary_losses(self, output: torch.Tensor, target: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """``delta_l1``: λ · Σ mean|Δ| over the Delta layers of the last training forward (none when off)."""
        if not self.training or not self.delta_enabled or self.delta_penalty == 0:
            return {}
        terms = [m.l1 for m in self.delta_layers() if m.l1 is not None]
        return {"delta_l1": self.delta_penalty * torch.stack(terms).sum()} if terms else {}


@MODELS.register("delta_cnn")
def delta_cnn(num_classes: int, image_size: int, in_chans: int = 1, num_frames: int = 8, **kwargs) -> DeltaCNN:
    if "channels" in kwargs:
        kwargs["channels"] = tuple(kwargs["channels"])
    return DeltaCNN(num_classes, image_size, in_chans, num_frames, **kwargs)


delta_cnn.input_modality = "video"
delta_cnn.default_data = "moving_digits"
