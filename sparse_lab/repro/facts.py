"""Facts a claim states beside its runs, computed when the claim is judged (no training).

``stvit_macs``: STViT against the ViT with DeiT's geometry at 224x224 (patch 16, 12 layers: 4 blocks on
image tokens, the two STGM layers, 6 on 3x3 pooled + 7 global semantic tokens), MACs and parameters next
to Chang et al. 2023. MACs are counted by sparse_lab's operator-level counter: convolutions, linears and
both attention matmuls (self- and cross-attention).
"""

from __future__ import annotations

SIZES = [("Ti", "vit_ti16", "stvit_ti16"), ("S", "vit_s16", "stvit_s16"), ("B", "vit_b16", "stvit_b16")]
PAPER_REDUCTION = "≈ 58%"  # Chang et al., CVPR 2023: STViT on DeiT-T/S/B, about 58% fewer FLOPs, same parameters


def macs_and_params(name: str, preset: str) -> tuple[int, int]:
    import torch

    from sparse_lab.measure import count_macs, parameter_counts
    from sparse_lab.models import build_model

    model = build_model(name, modality="image", num_classes=1000, image_size=224, preset=preset)
    macs = count_macs(model, torch.zeros(1, 3, 224, 224)).dense
    return macs, parameter_counts(model)[0]


def stvit_macs() -> str:
    lines = [
        "STViT against the same-sized ViT at 224x224 (DeiT geometry; `sparse-lab profile` counts):",
        "",
        "| DeiT size | ViT GMACs | STViT GMACs | reduction (ours) | reduction (paper) | ViT params | STViT params |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size, vit_preset, stvit_preset in SIZES:
        vit_macs, vit_params = macs_and_params("vit", vit_preset)
        st_macs, st_params = macs_and_params("stvit", stvit_preset)
        lines.append(
            f"| {size} | {vit_macs / 1e9:.3f} | {st_macs / 1e9:.3f} | {1 - st_macs / vit_macs:.1%} | {PAPER_REDUCTION} "
            f"| {vit_params / 1e6:.2f}M | {st_params / 1e6:.2f}M |"
        )
    return "\n".join(lines)


FACTS = {"stvit_macs": stvit_macs}
