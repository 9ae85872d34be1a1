"""Exact-count masks: a mask keeps ``round(density · numel)`` entries, the top-k by score."""

from __future__ import annotations

import torch


def kept_count(density: float, numel: int) -> int:
    return min(numel, max(0, round(density * numel)))


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest scores; ties go to the lower flat index (deterministic)."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        order = torch.argsort(flat, descending=True, stable=True)
        mask[order[:k]] = True
    return mask.view(scores.shape)


def random_mask(shape: tuple[int, ...], k: int, generator: torch.Generator) -> torch.Tensor:
    """Uniformly random mask with exactly ``k`` entries kept."""
    return topk_mask(torch.rand(shape, generator=generator), k)
