"""What a model, a layer or a datamodule may declare, and who reads it.

Every convention between packages is named here, once, as a ``typing.Protocol``. A model implements
what applies to it; ``sparsity/``, ``measure/``, ``tasks/`` and the experiment read these protocols and
never import a model class, so a model written outside sparse-lab plugs in by declaring the same
names. Nothing here is required: each protocol says what happens without it.

| protocol              | declared by            | read by                                       |
|-----------------------|------------------------|-----------------------------------------------|
| ``DenseLayers``       | a model                | ``sparsity.prunable`` (layers kept dense)     |
| ``ChannelGroups``     | any module of a model  | ``sparsity.channels`` (structured pruning)    |
| ``ExtraMacs``         | any module             | ``measure.macs`` (MACs of non-aten kernels)   |
| ``ActivationReport``  | any module             | ``measure.activations`` / ``measure.sops``    |
| ``SpikeInput``        | a weight layer         | ``measure.sops`` (SOPs instead of MACs)       |
| ``AuxiliaryLosses``   | a model                | ``tasks`` (terms added to the task's loss)    |
| ``ExampleInput``      | a datamodule           | measurement (MACs, latency) and channel search|
| ``InputModality``     | a model constructor    | the experiment (model / data mismatch)        |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class DenseLayers(Protocol):
    """Weight layers that stay dense unless a method's config says otherwise (open_lth's convention).

    Names are module names relative to the model (``model.named_modules()``). Without a declaration
    the first and the last weight layer in registration order are taken as input and output layers.
    """

    input_layer_names: tuple[str, ...]  # layers reading raw input (``prune_first_layer`` prunes them)
    output_layer_names: tuple[str, ...]  # the classifier / prediction head (``prune_classifier`` prunes them)


@dataclass
class ChannelGroup:
    """Channels that can be removed together without touching anything outside the group.

    ``scale`` has one entry per channel: the BatchNorm γ or learnable gate a structured method ranks
    and regularises. ``coupled_scales`` are further per-channel scales of the same channels (e.g. the
    γ of every BatchNorm joined by a residual addition) that are regularised alike. ``keep`` removes
    every other channel, in place, making tensors smaller (not masked); a narrowed model computes what
    the model with the removed channels' scales at zero computes (eval mode), up to the limits its
    declaring family documents.
    """

    name: str  # where the channels live, e.g. "features.3.conv" or "blocks.0.attn"
    kind: str  # channels are ranked against channels of one kind: "bn_channel" | "head" | "mlp_unit" | ...
    scale: nn.Parameter
    layers: list[str]  # module names (relative to the model) whose MACs scale with the group's size
    keep: Callable[[torch.Tensor], None] = field(repr=False)  # keep only these channel indices, in place
    coupled_scales: tuple[nn.Parameter, ...] = ()

    @property
    def size(self) -> int:
        return self.scale.numel()


@runtime_checkable
class ChannelGroups(Protocol):
    """A module that knows its own removable channels (MobileNet blocks, ViT heads, sparse-conv chains).

    ``prefix`` is the module's name in the model followed by a dot ("" for the model itself); group
    names and ``layers`` are written with it. ``add_gates``: a module without BatchNorm adds a learnable
    gate (ones) in γ's place; without it, only gates that exist are offered. Modules below one that
    declares are not searched again. A model that declares nothing anywhere gets the generic path
    (Torch-Pruning's dependency graph over BatchNorm channels).
    """

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]: ...


@runtime_checkable
class ExtraMacs(Protocol):
    """A module whose multiply-accumulates are not visible as aten operators (a custom kernel, an
    extension op): MACs per sample of one call. Everything aten runs, fused attention included, is
    counted at the operator level without it."""

    def extra_macs(self, inputs: tuple[Any, ...], output: Any) -> int: ...


@runtime_checkable
class ActivationReport(Protocol):
    """A layer whose activation sparsity is not "output == 0": Delta layers (``"temporal"``: zero
    changes) and spiking neurons (``"spikes"``: zero spike counts; their output is the spike count).
    ``activation_zeros`` returns ``(zeros, total)`` for one call."""

    activation_kind: str  # "spatial" | "temporal" | "spikes"

    def activation_zeros(self, inputs: tuple[Any, ...], output: Any) -> tuple[int, int]: ...


@runtime_checkable
class SpikeInput(Protocol):
    """A weight layer whose input is spike counts: it costs synaptic operations (accumulates), not MACs."""

    spike_input: bool


@runtime_checkable
class AuxiliaryLosses(Protocol):
    """Training terms a model adds to its task's loss (already weighted), each logged as
    ``train/loss_<name>``: e.g. SCTN's flow consistency, the Delta layers' L1 on changes. ``output`` is
    what the model's forward returned for the batch, ``target`` the batch's labels or flow."""

    def auxiliary_losses(self, output: Any, target: Any, epoch: int) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class TestItems(Protocol):
    """A task's last test, item by item in loader order (``sparse_lab.test_items``): ``{"metric": the
    results.json metric the values average to, "values": per item, "key": what identifies the items (e.g.
    the labels)}``, or None when it has none."""

    def test_items(self) -> dict | None: ...


@runtime_checkable
class TestItemGroups(Protocol):
    """A datamodule whose test items come in groups that fail together (e.g. several renderings of one
    source digit): per test item in loader order, its group's id. The test set's sampling error is counted
    in groups (``report.stats``); undeclared: every item is its own."""

    def test_item_groups(self) -> Any | None: ...


@runtime_checkable
class ExampleInput(Protocol):
    """One input of batch size 1 on the CPU, for counting MACs, measuring latency and tracing the model
    (the generic channel-group path). Every datamodule provides it."""

    def example_input(self) -> Any: ...


@runtime_checkable
class InputModality(Protocol):
    """What a model constructor (or class) reads: ``"image"``, ``"video"``, ``"point_cloud"``,
    ``"point_cloud_pair"``; ``default_data`` names a dataset that fits. Undeclared: not checked."""

    input_modality: str
    default_data: str


@dataclass(frozen=True)
class DataInfo:
    """What a datamodule declares (its ``info``): the task that trains on it, the sizes a model is built
    from, and its modality."""

    modality: str  # image | video | point_cloud | point_cloud_pair | ...
    num_classes: int
    task: str = "classification"
    sizes: dict = field(default_factory=dict)  # passed to the model constructor, e.g. image_size, in_chans
