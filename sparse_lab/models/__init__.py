"""Model registry: plain ``nn.Module`` families registered by name.

Every constructor takes the data's sizes (``num_classes``, ``image_size``, ``in_chans``) plus its own
keyword arguments, and every model class declares ``input_modality`` so a run can reject a
model/data mismatch before training.
"""

from __future__ import annotations

from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")

# Importing the family modules registers them.
from sparse_lab.models import delta, mobilenet, stvit, vit  # noqa: E402,F401
from sparse_lab.models import e3dsnn  # noqa: E402,F401
from sparse_lab.models import sctn  # noqa: E402,F401


def build_model(name: str, *, modality: str, **kwargs) -> nn.Module:
    """Build model ``name``; ``modality`` is the data's (image, point_cloud, ...), checked against the model's."""
    constructor = MODELS.get(name)
    wanted = getattr(constructor, "input_modality", None)
    if wanted is not None and wanted != modality:
        raise UserError(
            f"model {name!r} takes {wanted} input but the data gives {modality}; "
            f"pick a {wanted} dataset (e.g. data={constructor.default_data})"
        )
    return constructor(**kwargs)
