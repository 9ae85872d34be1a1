"""Semantic Token ViT (Chang et al., CVPR 2023, "Making Vision Transformers efficient from a token
sparsification view").

A DeiT-style backbone (the ``Block`` of ``vit.py``) in three stages:

1. ``stgm_at`` standard blocks on the image tokens (plus positional embedding);
2. the semantic token generation module (STGM): initial semantic tokens are the image-token grid
   average-pooled to ``pool_size x pool_size`` plus ``num_global`` learnable global tokens; two
   attention layers refine them with the semantic tokens as queries and the image tokens as
   keys/values (each layer: cross-attention + MLP, pre-norm, residual);
3. the remaining ``depth - stgm_at - 2`` blocks on the semantic tokens only, then the mean of the
   semantic tokens is classified.

The two STGM layers take the place of two backbone layers (DeiT-S: 4 blocks, STGM, 6 blocks = 12
layers), which is how the paper keeps the depth of the DeiT it starts from. *Ours* where the paper
is silent for plain DeiT: no class token (the classifier reads the mean of the semantic tokens);
both STGM layers attend to the same image tokens (the output of stage 1). The recovery module of
STViT-R (dense prediction) is not built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.models import MODELS
from sparse_lab.models.presets import resolve_preset
from sparse_lab.models.vit import Block, Mlp, PatchEmbed
from sparse_lab.protocols import ChannelGroup
from sparse_lab.surgery import ensure_gate, head_columns, keep_gated_inputs, keep_outputs

PRESETS = {
    # Smoke tests: 1 image block, the STGM, 1 semantic block; 2x2 pooled + 1 global token.
    "tiny": dict(patch_size=8, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0, stgm_at=1, pool_size=2, num_global=1),
    # 32x32 inputs on a CPU, like vit's small32: 16 image tokens (4x4) -> 2x2 pooled + 2 global = 6
    # semantic tokens; 1 image block, the 2 STGM layers, 2 blocks on semantic tokens.
    "small32": dict(
        patch_size=8, embed_dim=128, depth=5, num_heads=4, mlp_ratio=2.0, stgm_at=1, pool_size=2, num_global=2
    ),
    # DeiT-T/S/B geometry at 224 (14x14 tokens): 4 image blocks, STGM, 6 semantic blocks;
    # 3x3 pooled + 7 global = 16 semantic tokens.
    "stvit_ti16": dict(
        patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, stgm_at=4, pool_size=3, num_global=7
    ),
    "stvit_s16": dict(
        patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, stgm_at=4, pool_size=3, num_global=7
    ),
    "stvit_b16": dict(
        patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, stgm_at=4, pool_size=3, num_global=7
    ),
}


class CrossAttention(nn.Module):
    """Multi-head attention with queries from one token set and keys/values from another."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise UserError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads  # channel pruning may leave num_heads * head_dim < dim
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        # Optional learnable per-head gate (channel-pruning methods add one; None = no gate).
        self.register_parameter("gate", None)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, nq, _ = queries.shape
        nk, h, hd = context.shape[1], self.num_heads, self.head_dim
        q = self.q(queries).reshape(b, nq, h, hd).transpose(1, 2)
        k, v = self.kv(context).reshape(b, nk, 2, h, hd).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        if self.gate is not None:
            x = x * self.gate.view(1, -1, 1, 1)
        return self.proj(x.transpose(1, 2).reshape(b, nq, h * hd))

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]:
        """The heads, gated (``protocols.ChannelGroups``): a head is its rows of ``q``, its k and v rows of
        ``kv`` and its columns of ``proj``. A gate at zero removes a head exactly; at removal the kept gates
        are folded into ``proj`` and the gate is dropped."""
        gate = ensure_gate(self, self.num_heads, self.q.weight, add_gates)
        if gate is None:
            return []
        layers = [f"{prefix}q", f"{prefix}kv", f"{prefix}proj", prefix[:-1]]  # the module itself: attention matmuls
        return [ChannelGroup(f"{prefix}heads", "head", gate, layers, self._keep_heads)]

    @torch.no_grad()
    def _keep_heads(self, heads: torch.Tensor) -> None:
        heads = heads.to(self.q.weight.device)
        columns = head_columns(heads, self.head_dim)
        inner = self.num_heads * self.head_dim
        keep_outputs(self.q, columns)
        keep_outputs(self.kv, torch.cat([columns, inner + columns]))
        keep_gated_inputs(self.proj, columns, self.gate.index_select(0, heads).repeat_interleave(self.head_dim))
        self.num_heads = len(heads)
        self.gate = None  # folded into proj


class SemanticAttentionLayer(nn.Module):
    """One STGM layer: semantic tokens attend to image tokens, then an MLP (pre-norm, residual)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, semantic: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        semantic = semantic + self.attn(self.norm_q(semantic), self.norm_kv(image))
        return semantic + self.mlp(self.norm2(semantic))


class SemanticTokenGeneration(nn.Module):
    """Image tokens [B, H*W, D] -> semantic tokens [B, pool_size² + num_global, D]."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, grid: int, pool_size: int, num_global: int, layers: int = 2
    ):
        super().__init__()
        if not 1 <= pool_size <= grid:
            raise UserError(f"model.pool_size must be between 1 and the token grid side {grid}, got {pool_size}")
        if num_global < 0:
            raise UserError(f"model.num_global must be >= 0, got {num_global}")
        self.grid, self.pool_size, self.num_global = grid, pool_size, num_global
        self.global_tokens = nn.Parameter(torch.zeros(1, num_global, dim))
        self.layers = nn.ModuleList([SemanticAttentionLayer(dim, num_heads, mlp_ratio) for _ in range(layers)])

    @property
    def num_tokens(self) -> int:
        return self.pool_size**2 + self.num_global

    def initial_tokens(self, image: torch.Tensor) -> torch.Tensor:
        b, n, d = image.shape
        grid = image.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        pooled = F.adaptive_avg_pool2d(grid, self.pool_size).flatten(2).transpose(1, 2)  # [B, p², D]
        return torch.cat([pooled, self.global_tokens.expand(b, -1, -1)], dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        semantic = self.initial_tokens(image)
        for layer in self.layers:
            semantic = layer(semantic, image)
        return semantic


class SemanticTokenViT(nn.Module):
    input_modality = "image"
    input_layer_names = ("patch_embed.proj",)  # protocols.DenseLayers
    output_layer_names = ("head",)

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        in_chans: int = 3,
        patch_size: int = 8,
        embed_dim: int = 128,
        depth: int = 5,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        stgm_at: int = 1,
        pool_size: int = 2,
        num_global: int = 2,
    ):
        super().__init__()
        if not 0 <= stgm_at <= depth - 2:
            raise UserError(
                f"model.stgm_at must be between 0 and depth - 2 = {depth - 2} (the STGM takes two layers), "
                f"got {stgm_at}"
            )
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, embed_dim)
        grid = math.isqrt(self.patch_embed.num_patches)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.image_blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(stgm_at)])
        self.stgm = SemanticTokenGeneration(embed_dim, num_heads, mlp_ratio, grid, pool_size, num_global)
        self.semantic_blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth - stgm_at - 2)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.stgm.global_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.image_blocks(self.patch_embed(x) + self.pos_embed)
        return self.norm(self.semantic_blocks(self.stgm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=1))


@MODELS.register("stvit")
def stvit(
    num_classes: int, image_size: int, in_chans: int = 3, preset: str | None = "small32", **kwargs
) -> SemanticTokenViT:
    return SemanticTokenViT(num_classes, image_size, in_chans, **resolve_preset(PRESETS, preset, kwargs))


stvit.input_modality = "image"
stvit.default_data = "digits"
