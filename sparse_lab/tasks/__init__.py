"""Tasks: LightningModules that wrap a plain model with its loss, metrics and optimisation.

The data decides the task (``DataInfo.task``): a model is trained for what its data asks.
"""

from __future__ import annotations

import pytorch_lightning as pl
from torch import nn


def build_task(info, model: nn.Module, optim: dict) -> pl.LightningModule:
    if info.task == "classification":
        from sparse_lab.tasks.classification import ClassificationTask

        return ClassificationTask(model, info.num_classes, **optim)
    if info.task == "scene_flow":
        from sparse_lab.tasks.scene_flow import SceneFlowTask

        return SceneFlowTask(model, **optim)
    raise ValueError(f"no task named {info.task!r}")
