"""Model registry: plain ``nn.Module`` families registered by name.

Every constructor takes the data's sizes (``num_classes`` and the data's ``sizes``, e.g. ``image_size``,
``in_chans``) plus its own keyword arguments, and declares ``input_modality`` (``protocols.InputModality``)
so a run can reject a model/data mismatch before training. A model from outside the package is named by
``_target_`` in its config and follows the same contract.
"""

from __future__ import annotations

from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.protocols import DataInfo
from sparse_lab.registry import Registry, component_name, import_submodules

MODELS: Registry[nn.Module] = Registry("model")
import_submodules(__name__)  # each family module registers its models


def check_modality(constructor, name: str, modality: str) -> None:
    wanted = getattr(constructor, "input_modality", None)
    if wanted is not None and wanted != modality:
        example = getattr(constructor, "default_data", None)
        raise UserError(
            f"model {name!r} takes {wanted} input but the data gives {modality}; "
            f"pick a {wanted} dataset" + (f" (e.g. data={example})" if example else "")
        )


def build_model(name: str, *, modality: str, **kwargs) -> nn.Module:
    """Build model ``name``; ``modality`` is the data's (image, point_cloud, ...), checked against the model's."""
    constructor = MODELS.get(name)
    check_modality(constructor, name, modality)
    return constructor(**kwargs)


def model_from_config(options: dict, info: DataInfo) -> nn.Module:
    """The model a config group names (``name`` or ``_target_``), built for the data described by ``info``."""
    check_modality(MODELS.constructor(options), component_name(options), info.modality)
    return MODELS.from_config(options, num_classes=info.num_classes, **info.sizes)
