"""Tasks: LightningModules that wrap a plain model with its loss, metrics and optimisation.

The data decides the task (``DataInfo.task``): a model is trained for what its data asks.
"""

from __future__ import annotations

import pytorch_lightning as pl
from torch import nn

from sparse_lab.registry import Registry, import_submodules

TASKS: Registry[pl.LightningModule] = Registry("task")
import_submodules(__name__)  # each task module registers its task


def build_task(info, model: nn.Module, optim: dict) -> pl.LightningModule:
    if info.task == "classification":
        return TASKS.build(info.task, model=model, num_classes=info.num_classes, **optim)
    return TASKS.build(info.task, model=model, **optim)
