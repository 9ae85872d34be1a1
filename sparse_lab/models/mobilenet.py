"""MobileNetV1 (Howard et al. 2017): depthwise-separable convolutions; MobileNetV2 (Sandler et al.
2018): inverted residuals with linear bottlenecks. Both take a width multiplier.

For small inputs (``image_size <= 64``) the stem keeps stride 1, so a 32x32 image leaves the last
stage at 2x2 instead of 1x1. (Also keeping the first stage at stride 1, the usual CIFAR variant,
costs 3.6x the MACs and trains 3.3x slower on a 2-core CPU for little gain on digits.)
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.models import MODELS
from sparse_lab.protocols import ChannelGroup
from sparse_lab.surgery import Consumer, ConvBN, bn_chain_group

# (expansion t, output channels c, repeats n, first stride s), as in Table 2 of the paper.
V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_act(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True, relu6: bool = True
) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _link(name: str, block: nn.Sequential) -> ConvBN:
    """A ``conv_bn_act`` block named ``name`` as a link of a channel chain."""
    return ConvBN(f"{name}.0", block[0], block[1])


def _activation(block: nn.Sequential) -> nn.Module:
    return block[2] if len(block) > 2 else nn.Identity()


def _reader(name: str, block: nn.Sequential) -> Consumer:
    """A ``conv_bn_act`` 1x1 block reading a chain: bias-free, so a folded constant shifts its BN's running mean."""
    return Consumer(f"{name}.0", block[0], bn=block[1])


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else [conv_bn_act(cin, hidden, 1)]
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden), conv_bn_act(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    input_modality = "image"
    input_layer_names = ("features.0.0",)  # protocols.DenseLayers
    output_layer_names = ("classifier.1",)

    def __init__(
        self, num_classes: int, image_size: int, in_chans: int = 3, width_mult: float = 1.0, dropout: float = 0.2
    ):
        super().__init__()
        if width_mult <= 0:
            raise UserError(f"model.width_mult must be positive, got {width_mult}")
        small_input = image_size <= 64
        channels = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        features = [conv_bn_act(in_chans, channels, 3, stride=1 if small_input else 2)]
        for t, c, n, s in V2_STAGES:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(channels, cout, s if i == 0 else 1, t))
                channels = cout
        features.append(conv_bn_act(channels, last, 1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]:
        """BN chains (``protocols.ChannelGroups``), scaled by the γ of the BN nearest the consumer:

        - each expanded block's hidden channels: expand 1x1 conv -> depthwise conv -> project 1x1 conv;
        - the stem's outputs, when they feed only the first block's depthwise conv (no expansion, no residual);
        - the last 1x1 conv's outputs, through pooling into the classifier.

        Every consumer is a 1x1 conv or the classifier, so a removed channel's act(β) is folded and removal is
        exact. Channels joined by a residual addition (the blocks' outputs) are left alone."""
        p, features = f"{prefix}features", self.features
        groups = []
        first = features[1]
        if len(first.conv) == 2 and not first.use_residual:
            stem, reader = _link(f"{p}.0", features[0]), _reader(f"{p}.1.conv.1", first.conv[1])
            groups.append(
                bn_chain_group(
                    f"{p}.0", stem, _activation(first.conv[0]), reader, _link(f"{p}.1.conv.0", first.conv[0])
                )
            )
        for i, block in enumerate(features):
            if isinstance(block, InvertedResidual) and len(block.conv) == 3:
                b = f"{p}.{i}.conv"
                groups.append(
                    bn_chain_group(
                        b,
                        _link(f"{b}.0", block.conv[0]),
                        _activation(block.conv[1]),
                        _reader(f"{b}.2", block.conv[2]),
                        _link(f"{b}.1", block.conv[1]),
                    )
                )
        last = f"{p}.{len(features) - 1}"
        groups.append(
            bn_chain_group(
                last,
                _link(last, features[-1]),
                _activation(features[-1]),
                Consumer(f"{prefix}classifier.1", self.classifier[1]),
            )
        )
        return groups


# MobileNetV1 body, Table 1 of the paper: (output channels, stride) of each depthwise-separable block.
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU.

    The submodules are named ``dw`` and ``pw`` so recipes can select them by parameter name
    (Fast Sparse ConvNets prunes only ``.pw.`` weights)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = conv_bn_act(cin, cin, 3, stride, groups=cin, relu6=False)
        self.pw = conv_bn_act(cin, cout, 1, relu6=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class MobileNetV1(nn.Module):
    input_modality = "image"
    input_layer_names = ("features.0.0",)  # protocols.DenseLayers
    output_layer_names = ("classifier.1",)

    def __init__(
        self, num_classes: int, image_size: int, in_chans: int = 3, width_mult: float = 1.0, dropout: float = 0.0
    ):
        super().__init__()
        if width_mult <= 0:
            raise UserError(f"model.width_mult must be positive, got {width_mult}")
        small_input = image_size <= 64
        channels = make_divisible(32 * width_mult)
        features = [conv_bn_act(in_chans, channels, 3, stride=1 if small_input else 2, relu6=False)]
        for c, s in V1_BLOCKS:
            cout = make_divisible(c * width_mult)
            features.append(DepthwiseSeparable(channels, cout, s))
            channels = cout
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]:
        """BN chains (``protocols.ChannelGroups``): the stem's and every pointwise conv's outputs, through the
        next block's depthwise conv into its pointwise conv (the last block's: through pooling into the
        classifier). Scale: the depthwise BN's γ (the last pointwise BN's for the last chain); the consumers
        are 1x1 convs or the classifier, so act(β) is folded and removal is exact. Consecutive chains share
        a pointwise conv (its inputs in one, its outputs in the next)."""
        p = f"{prefix}features"
        producers = [(f"{p}.0", self.features[0])] + [(f"{p}.{i}.pw", b.pw) for i, b in enumerate(self.features) if i]
        groups = []
        for i, (name, block) in enumerate(producers):
            if i + 1 < len(self.features):
                nxt, n = self.features[i + 1], f"{p}.{i + 1}"
                groups.append(
                    bn_chain_group(
                        name,
                        _link(name, block),
                        _activation(nxt.dw),
                        _reader(f"{n}.pw", nxt.pw),
                        _link(f"{n}.dw", nxt.dw),
                    )
                )
            else:
                groups.append(
                    bn_chain_group(
                        name,
                        _link(name, block),
                        _activation(block),
                        Consumer(f"{prefix}classifier.1", self.classifier[1]),
                    )
                )
        return groups


@MODELS.register("mobilenet_v1")
def mobilenet_v1(
    num_classes: int, image_size: int, in_chans: int = 3, width_mult: float = 1.0, dropout: float = 0.0
) -> MobileNetV1:
    return MobileNetV1(num_classes, image_size, in_chans, width_mult, dropout)


mobilenet_v1.input_modality = "image"
mobilenet_v1.default_data = "digits"


@MODELS.register("mobilenet_v2")
def mobilenet_v2(
    num_classes: int, image_size: int, in_chans: int = 3, width_mult: float = 1.0, dropout: float = 0.2
) -> MobileNetV2:
    return MobileNetV2(num_classes, image_size, in_chans, width_mult, dropout)


mobilenet_v2.input_modality = "image"
mobilenet_v2.default_data = "digits"
