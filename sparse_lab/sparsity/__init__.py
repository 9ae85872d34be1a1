"""Sparsity methods, registered by name: each is a Lightning Callback built on ``SparsityMethod``."""

from __future__ import annotations

from sparse_lab.registry import Registry, import_submodules

METHODS: Registry = Registry("sparsity method")
import_submodules(__name__)  # each method module registers its methods


def build_method(name: str, **kwargs):
    return METHODS.build(name, **kwargs)
