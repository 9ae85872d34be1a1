"""Semantic Token ViT (Chang et al., CVPR 2023, "Making Vision Transformers efficient from a token
sparsification view"; reference code github.com/changsn/STViT-R).

A DeiT-style backbone (the ``Block`` of ``vit.py``) in three stages:

1. ``stgm_at`` standard blocks on the image tokens (plus positional embedding);
2. the semantic token generation module (STGM): initial semantic tokens are the image-token grid
   pooled to ``pool_size x pool_size`` (``pool``: adaptive max pooling, as the reference's
   ``multi_scale_semantic_token1``, or average pooling) plus ``num_global`` learnable global tokens;
   two attention layers refine them with the semantic tokens as queries (each layer: cross-attention +
   MLP, pre-norm, residual):

   - the first layer attends within local windows (``first_layer_window`` k): each pooled token's
     keys/values are the k x k image tokens centred on its pooling region (the reference: the pooled
     tokens of a window attend to that window's 10 x 10 neighbourhood of image tokens). The global
     tokens have no window: they join after this layer (the reference adds its learnable tokens after
     the first layer too). ``first_layer_window: 0`` is global attention, every semantic token (global
     ones included) on every image token;
   - the second layer's keys/values are the semantic tokens concatenated with the image tokens
     (``second_layer_keys: semantic_and_image``, the reference's ``torch.cat([semantic_token, x])``),
     or the image tokens only (``image``);
3. the remaining ``depth - stgm_at - 2`` blocks on the semantic tokens only, then the mean of the
   semantic tokens is classified.

Every block and STGM layer scales its two residual branches by learnable per-channel factors
initialised to ``layer_scale`` (the reference's ``layer_scale_init_value=1e-5``; null = none).

The two STGM layers take the place of two backbone layers (DeiT-S: 4 blocks, STGM, 6 blocks = 12
layers), which is how the paper keeps the depth of the DeiT it starts from. *Ours* where the paper
is silent for plain DeiT: no class token (the classifier reads the mean of the semantic tokens); the
pooled tokens are kept by a residual connection around the first layer (the reference's default
``SHORTCUT: False`` drops it); a pooled token's first-layer keys are image tokens only (the
reference also lists the window's pooled tokens). The recovery module of STViT-R (dense prediction)
is not built.
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

POOLS = ("max", "avg")  # initial semantic tokens: adaptive max pooling (reference) | average pooling
SECOND_LAYER_KEYS = ("semantic_and_image", "image")  # keys/values of the second STGM layer
LAYER_SCALE = 1e-5  # the reference's layer_scale_init_value

PRESETS = {
    # Smoke tests: 1 image block, the STGM, 1 semantic block; 2x2 pooled + 1 global token.
    "tiny": dict(
        patch_size=8,
        embed_dim=32,
        depth=4,
        num_heads=2,
        mlp_ratio=2.0,
        stgm_at=1,
        pool_size=2,
        num_global=1,
        first_layer_window=3,
    ),
    # 32x32 inputs on a CPU, like vit's small32: 16 image tokens (4x4) -> 2x2 pooled + 2 global = 6
    # semantic tokens; 1 image block, the 2 STGM layers, 2 blocks on semantic tokens. First-layer
    # windows of 3x3 of the 4x4 tokens (the reference's 10 of 14 at 224, scaled).
    "small32": dict(
        patch_size=8,
        embed_dim=128,
        depth=5,
        num_heads=4,
        mlp_ratio=2.0,
        stgm_at=1,
        pool_size=2,
        num_global=2,
        first_layer_window=3,
    ),
    # DeiT-T/S/B geometry at 224 (14x14 tokens): 4 image blocks, STGM, 6 semantic blocks;
    # 3x3 pooled + 7 global = 16 semantic tokens; first-layer windows of 10x10 image tokens (the
    # reference's key windows on a 14x14 map: F.unfold(kernel_size=10, stride=4)).
    "stvit_ti16": dict(
        patch_size=16,
        embed_dim=192,
        depth=12,
        num_heads=3,
        mlp_ratio=4.0,
        stgm_at=4,
        pool_size=3,
        num_global=7,
        first_layer_window=10,
    ),
    "stvit_s16": dict(
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        stgm_at=4,
        pool_size=3,
        num_global=7,
        first_layer_window=10,
    ),
    "stvit_b16": dict(
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        stgm_at=4,
        pool_size=3,
        num_global=7,
        first_layer_window=10,
    ),
}


def layer_scale_parameter(module: nn.Module, name: str, dim: int, init: float | None) -> None:
    """A learnable per-channel residual scale initialised to ``init`` (CaiT's LayerScale), or None."""
    module.register_parameter(name, None if init is None else nn.Parameter(torch.full((dim,), float(init))))


def scaled(scale: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if scale is None else x * scale


class ScaledBlock(Block):
    """The ViT block with layer scale on both residual branches (the reference's ``layers.Block``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: float | None = None):
        super().__init__(dim, num_heads, mlp_ratio)
        layer_scale_parameter(self, "layer_scale_1", dim, layer_scale)
        layer_scale_parameter(self, "layer_scale_2", dim, layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + scaled(self.layer_scale_1, self.attn(self.norm1(x)))
        return x + scaled(self.layer_scale_2, self.mlp(self.norm2(x)))


class CrossAttention(nn.Module):
    """Multi-head attention with queries from one token set and keys/values from another.

    ``key_index`` [N_q, W] (optional): query i attends only to the context tokens ``key_index[i]``
    (local windows); keys and values are computed once for the whole context and gathered."""

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

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, key_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, nq, _ = queries.shape
        nk, h, hd = context.shape[1], self.num_heads, self.head_dim
        q = self.q(queries).reshape(b, nq, h, hd).transpose(1, 2)  # [B, h, N_q, hd]
        k, v = self.kv(context).reshape(b, nk, 2, h, hd).permute(2, 0, 3, 1, 4)  # [B, h, N_k, hd]
        if key_index is None:
            x = F.scaled_dot_product_attention(q, k, v)
        else:  # each query its own W keys: [B, h*N_q, 1, hd] against [B, h*N_q, W, hd]
            w = key_index.shape[1]
            k, v = (t[:, :, key_index].reshape(b, h * nq, w, hd) for t in (k, v))
            x = F.scaled_dot_product_attention(q.reshape(b, h * nq, 1, hd), k, v).view(b, h, nq, hd)
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
    """One STGM layer: semantic tokens attend to a context (image tokens, or semantic and image tokens),
    then an MLP (pre-norm, residual, optional layer scale)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: float | None = None):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        layer_scale_parameter(self, "layer_scale_1", dim, layer_scale)
        layer_scale_parameter(self, "layer_scale_2", dim, layer_scale)

    def forward(
        self, semantic: torch.Tensor, context: torch.Tensor, key_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        semantic = semantic + scaled(
            self.layer_scale_1, self.attn(self.norm_q(semantic), self.norm_kv(context), key_index)
        )
        return semantic + scaled(self.layer_scale_2, self.mlp(self.norm2(semantic)))


def pooling_bins(grid: int, pool_size: int) -> list[tuple[int, int]]:
    """[start, end) of each adaptive-pooling bin along one side (torch's adaptive pooling rule)."""
    return [((i * grid) // pool_size, -((-(i + 1) * grid) // pool_size)) for i in range(pool_size)]


def window_key_index(grid: int, pool_size: int, window: int) -> torch.Tensor:
    """[pool_size², window²]: the image tokens (row-major on the grid) in the window x window block
    centred on each pooled token's pooling region, shifted to stay inside the grid."""
    starts = []
    for a, b in pooling_bins(grid, pool_size):
        starts.append(min(max(math.floor((a + b - window) / 2 + 0.5), 0), grid - window))
    offsets = torch.arange(window)
    rows = []
    for r in starts:
        for c in starts:
            rr, cc = r + offsets, c + offsets
            rows.append((rr[:, None] * grid + cc[None, :]).flatten())
    return torch.stack(rows)


class SemanticTokenGeneration(nn.Module):
    """Image tokens [B, H*W, D] -> semantic tokens [B, pool_size² + num_global, D]."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        grid: int,
        pool_size: int,
        num_global: int,
        layers: int = 2,
        pool: str = "max",
        second_layer_keys: str = "semantic_and_image",
        first_layer_window: int | None = None,
        layer_scale: float | None = None,
    ):
        super().__init__()
        if not 1 <= pool_size <= grid:
            raise UserError(f"model.pool_size must be between 1 and the token grid side {grid}, got {pool_size}")
        if num_global < 0:
            raise UserError(f"model.num_global must be >= 0, got {num_global}")
        if pool not in POOLS:
            raise UserError(f"model.pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if second_layer_keys not in SECOND_LAYER_KEYS:
            raise UserError(
                f"model.second_layer_keys must be one of {', '.join(SECOND_LAYER_KEYS)}, got {second_layer_keys!r}"
            )
        window = first_layer_window or 0  # 0 / None: global attention
        if not 0 <= window <= grid:
            raise UserError(
                f"model.first_layer_window must be between 1 and the token grid side {grid} (0: global attention), "
                f"got {first_layer_window}"
            )
        self.grid, self.pool_size, self.num_global = grid, pool_size, num_global
        self.pool, self.second_layer_keys, self.first_layer_window = pool, second_layer_keys, window or None
        self.global_tokens = nn.Parameter(torch.zeros(1, num_global, dim))
        self.layers = nn.ModuleList(
            [SemanticAttentionLayer(dim, num_heads, mlp_ratio, layer_scale) for _ in range(layers)]
        )
        index = window_key_index(grid, pool_size, window) if window else None
        self.register_buffer("key_index", index, persistent=False)  # [pool_size², window²] or None

    @property
    def num_tokens(self) -> int:
        return self.pool_size**2 + self.num_global

    def pooled_tokens(self, image: torch.Tensor) -> torch.Tensor:
        b, n, d = image.shape
        grid = image.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        pool = F.adaptive_max_pool2d if self.pool == "max" else F.adaptive_avg_pool2d
        return pool(grid, self.pool_size).flatten(2).transpose(1, 2)  # [B, p², D]

    def initial_tokens(self, image: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled_tokens(image)
        return torch.cat([pooled, self.global_tokens.expand(image.shape[0], -1, -1)], dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        first, *rest = self.layers
        if self.key_index is None:  # global attention: every semantic token on every image token
            semantic = first(self.initial_tokens(image), image)
        else:  # local windows for the pooled tokens; the global tokens join afterwards
            pooled = first(self.pooled_tokens(image), image, self.key_index)
            semantic = torch.cat([pooled, self.global_tokens.expand(image.shape[0], -1, -1)], dim=1)
        for layer in rest:
            context = torch.cat([semantic, image], dim=1) if self.second_layer_keys == "semantic_and_image" else image
            semantic = layer(semantic, context)
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
        pool: str = "max",
        second_layer_keys: str = "semantic_and_image",
        first_layer_window: int | None = None,
        layer_scale: float | None = LAYER_SCALE,
    ):
        super().__init__()
        if not 0 <= stgm_at <= depth - 2:
            raise UserError(
                f"model.stgm_at must be between 0 and depth - 2 = {depth - 2} (the STGM takes two layers), "
                f"got {stgm_at}"
            )
        if layer_scale is not None and not layer_scale > 0:
            raise UserError(f"model.layer_scale must be > 0 or null (no layer scale), got {layer_scale}")
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, embed_dim)
        grid = math.isqrt(self.patch_embed.num_patches)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.image_blocks = nn.Sequential(
            *[ScaledBlock(embed_dim, num_heads, mlp_ratio, layer_scale) for _ in range(stgm_at)]
        )
        self.stgm = SemanticTokenGeneration(
            embed_dim,
            num_heads,
            mlp_ratio,
            grid,
            pool_size,
            num_global,
            pool=pool,
            second_layer_keys=second_layer_keys,
            first_layer_window=first_layer_window,
            layer_scale=layer_scale,
        )
        self.semantic_blocks = nn.Sequential(
            *[ScaledBlock(embed_dim, num_heads, mlp_ratio, layer_scale) for _ in range(depth - stgm_at - 2)]
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


# Keys whose null is a value of their own (layer_scale: null = no layer scale), not "take the preset's".
NULL_MEANS_NONE = ("layer_scale",)


@MODELS.register("stvit")
def stvit(
    num_classes: int, image_size: int, in_chans: int = 3, preset: str | None = "small32", **kwargs
) -> SemanticTokenViT:
    explicit = {key: kwargs.pop(key) for key in NULL_MEANS_NONE if key in kwargs}
    return SemanticTokenViT(num_classes, image_size, in_chans, **resolve_preset(PRESETS, preset, kwargs), **explicit)


stvit.input_modality = "image"
stvit.default_data = "digits"
