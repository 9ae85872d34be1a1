"""Random pruning at initialisation (Liu et al., ICLR 2022, "The unreasonable effectiveness of random
pruning"): exact-count random masks drawn once with a layer-wise distribution, then trained with the
masks fixed.
"""

from __future__ import annotations

import torch

from sparse_lab.sparsity import METHODS
from sparse_lab.sparsity.base import SparsityMethod
from sparse_lab.sparsity.masks import kept_count, random_mask


@METHODS.register("random")
class RandomPruning(SparsityMethod):
    def initial_masks(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {
            p.name: random_mask(p.shape, kept_count(density, p.numel), generator)
            for p, density in zip(self.params, self.target_densities)
            if density < 1.0
        }
