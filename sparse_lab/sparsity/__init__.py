"""Sparsity methods, registered by name. Each is a Lightning Callback built on ``SparsityMethod``."""

from __future__ import annotations

from sparse_lab.registry import Registry
from sparse_lab.sparsity.base import SparsityMethod
from sparse_lab.sparsity.dense import Dense
from sparse_lab.sparsity.lottery import LotteryTicket
from sparse_lab.sparsity.masksparsity import MaskSparsity
from sparse_lab.sparsity.random import RandomPruning

METHODS: Registry[SparsityMethod] = Registry("sparsity method")
METHODS.register("dense")(Dense)
METHODS.register("random")(RandomPruning)
METHODS.register("lottery")(LotteryTicket)
METHODS.register("masksparsity")(MaskSparsity)


def build_method(name: str, **kwargs) -> SparsityMethod:
    return METHODS.build(name, **kwargs)
