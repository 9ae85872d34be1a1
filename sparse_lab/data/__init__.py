"""Data registry: LightningDataModules for embedded datasets and real-dataset loaders.

Every datamodule exposes ``info``: the sizes and modality a model is built from.
"""

from __future__ import annotations

import pytorch_lightning as pl

from sparse_lab.registry import Registry, import_submodules

DATASETS: Registry[pl.LightningDataModule] = Registry("dataset")
import_submodules(__name__)  # each dataset module registers its datamodules


def build_datamodule(name: str, **kwargs) -> pl.LightningDataModule:
    return DATASETS.build(name, **kwargs)
