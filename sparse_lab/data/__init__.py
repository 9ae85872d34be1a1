"""Data registry: LightningDataModules for embedded datasets and real-dataset loaders.

Every datamodule exposes ``info``: the sizes and modality a model is built from.
"""

from __future__ import annotations

import pytorch_lightning as pl

from sparse_lab.registry import Registry

DATASETS: Registry[pl.LightningDataModule] = Registry("dataset")

from sparse_lab.data import cifar10, digits, imagefolder, moving_digits  # noqa: E402,F401
from sparse_lab.data import modelnet40, shapes3d  # noqa: E402,F401
from sparse_lab.data import flow3d, scene_flow  # noqa: E402,F401


def build_datamodule(name: str, **kwargs) -> pl.LightningDataModule:
    return DATASETS.build(name, **kwargs)
