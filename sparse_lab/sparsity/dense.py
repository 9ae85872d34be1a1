"""Dense baseline: no masks. It still reports the (natural) sparsity of the prunable weights."""

from __future__ import annotations

from sparse_lab.sparsity import METHODS
from sparse_lab.sparsity.base import SparsityMethod


@METHODS.register("dense")
class Dense(SparsityMethod):
    def __init__(self, **kwargs):
        super().__init__(sparsity=0.0, **{k: v for k, v in kwargs.items() if k != "sparsity"})
