"""Sparsity methods, registered by name: each is a Lightning Callback built on ``SparsityMethod``."""

from __future__ import annotations

from sparse_lab.registry import Registry

METHODS: Registry = Registry("sparsity method")

# Importing the method modules registers them.
from sparse_lab.sparsity import dense, dynamic, gmp, lottery, masksparsity, nm, random  # noqa: E402,F401


def build_method(name: str, **kwargs):
    return METHODS.build(name, **kwargs)
