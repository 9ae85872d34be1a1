"""STViT vs ViT (DeiT geometry) at 224x224: MACs and parameters, next to Chang et al. 2023.

    .venv/bin/python scripts/repro_stvit_macs.py

Prints a markdown table (docs/results.md holds its output). MACs are counted by sparse_lab's
operator-level counter: convolutions, linears and both attention matmuls (self- and cross-attention).
"""

from __future__ import annotations

import torch

from sparse_lab.measure import count_macs, parameter_counts
from sparse_lab.models import build_model

SIZES = [("Ti", "vit_ti16", "stvit_ti16"), ("S", "vit_s16", "stvit_s16"), ("B", "vit_b16", "stvit_b16")]
PAPER_REDUCTION = "≈ 58%"  # Chang et al., CVPR 2023: STViT on DeiT-T/S/B, about 58% fewer FLOPs, same parameters


def macs_and_params(name: str, preset: str) -> tuple[int, int]:
    model = build_model(name, modality="image", num_classes=1000, image_size=224, preset=preset)
    macs = count_macs(model, torch.zeros(1, 3, 224, 224)).dense
    return macs, parameter_counts(model)[0]


def main() -> None:
    print("| DeiT size | ViT GMACs | STViT GMACs | reduction (ours) | reduction (paper) | ViT params | STViT params |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size, vit_preset, stvit_preset in SIZES:
        vit_macs, vit_params = macs_and_params("vit", vit_preset)
        st_macs, st_params = macs_and_params("stvit", stvit_preset)
        print(
            f"| {size} | {vit_macs / 1e9:.3f} | {st_macs / 1e9:.3f} | {1 - st_macs / vit_macs:.1%} | {PAPER_REDUCTION} "
            f"| {vit_params / 1e6:.2f}M | {st_params / 1e6:.2f}M |"
        )


if __name__ == "__main__":
    main()
