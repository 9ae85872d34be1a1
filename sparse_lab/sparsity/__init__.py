"""Sparsity methods, registered by name. Each is a Lightning Callback built on ``SparsityMethod``."""

from __future__ import annotations

from sparse_lab.registry import Registry
from sparse_lab.sparsity.base import SparsityMethod
from sparse_lab.sparsity.dense import Dense
from sparse_lab.sparsity.dynamic import DSL, SET, RigL
from sparse_lab.sparsity.gmp import GradualMagnitudePruning
from sparse_lab.sparsity.lottery import LotteryTicket
from sparse_lab.sparsity.masksparsity import MaskSparsity
from sparse_lab.sparsity.nm import NMSparsity
from sparse_lab.sparsity.random import RandomPruning

METHODS: Registry[SparsityMethod] = Registry("sparsity method")
METHODS.register("dense")(Dense)
METHODS.register("random")(RandomPruning)
METHODS.register("nm")(NMSparsity)
METHODS.register("rigl")(RigL)
METHODS.register("set")(SET)
METHODS.register("dsl")(DSL)
METHODS.register("gmp")(GradualMagnitudePruning)
METHODS.register("lottery")(LotteryTicket)
METHODS.register("masksparsity")(MaskSparsity)


def build_method(name: str, **kwargs) -> SparsityMethod:
    return METHODS.build(name, **kwargs)
