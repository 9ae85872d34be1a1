"""Vision Transformer (Dosovitskiy et al. 2021), pre-norm, with a class token.

Attention is written out (one ``qkv`` Linear, one ``proj`` Linear, fused scaled-dot-product
attention) rather than ``nn.MultiheadAttention``: every weight is then an ordinary Linear weight that
masks can cover (the MAC counter sees the fused attention op and counts its matmuls).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.models import MODELS
from sparse_lab.models.presets import resolve_preset
from sparse_lab.protocols import ChannelGroup
from sparse_lab.surgery import ensure_gate, head_columns, keep_gated_inputs, keep_outputs

# Named geometries; explicit keyword arguments override a preset's values.
PRESETS = {
    # Smoke tests (the model x method matrix): a few thousand parameters, seconds per run.
    "tiny": dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0),
    # Sized for 2 CPU cores and 32x32 inputs (digits/CIFAR): ~0.55M parameters, 16 tokens.
    "small32": dict(patch_size=8, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0),
    # A wider 32x32 geometry (patch 4: 64 tokens): slower on CPU, more accurate with long training.
    "wide32": dict(patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=2.0),
    "vit_ti16": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "vit_s16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "vit_b16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
}


class PatchEmbed(nn.Module):
    def __init__(self, image_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if image_size % patch_size:
            raise UserError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None):
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise UserError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads  # channel pruning may leave num_heads * head_dim < dim
        inner = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)
        # Optional learnable per-head gate (channel-pruning methods add one; None = no gate).
        self.register_parameter("gate", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, head_dim]
        if self.gate is not None:
            x = x * self.gate.view(1, -1, 1, 1)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]:
        """The heads, gated (``protocols.ChannelGroups``): a head is its q, k, v rows of ``qkv`` and its
        columns of ``proj``. A gate at zero removes a head's output exactly; at removal the kept gates are
        folded into ``proj`` and the gate is dropped."""
        gate = ensure_gate(self, self.num_heads, self.qkv.weight, add_gates)
        if gate is None:
            return []
        layers = [f"{prefix}qkv", f"{prefix}proj", prefix[:-1]]  # the module itself: its attention matmuls
        return [ChannelGroup(f"{prefix}heads", "head", gate, layers, self._keep_heads)]

    @torch.no_grad()
    def _keep_heads(self, heads: torch.Tensor) -> None:
        heads = heads.to(self.qkv.weight.device)
        columns = head_columns(heads, self.head_dim)
        inner = self.num_heads * self.head_dim
        keep_outputs(self.qkv, torch.cat([part * inner + columns for part in range(3)]))
        keep_gated_inputs(self.proj, columns, self.gate.index_select(0, heads).repeat_interleave(self.head_dim))
        self.num_heads = len(heads)
        self.gate = None  # folded into proj


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        # Optional learnable per-hidden-unit gate (channel-pruning methods add one; None = no gate).
        self.register_parameter("gate", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        return self.fc2(h if self.gate is None else h * self.gate)

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]:
        """The hidden units, gated (``protocols.ChannelGroups``): a unit is a row of ``fc1`` and a column of
        ``fc2``. A gate at zero removes a unit exactly; at removal the kept gates are folded into ``fc2``."""
        gate = ensure_gate(self, self.fc1.out_features, self.fc1.weight, add_gates)
        if gate is None:
            return []
        return [ChannelGroup(f"{prefix}units", "mlp_unit", gate, [f"{prefix}fc1", f"{prefix}fc2"], self._keep_units)]

    @torch.no_grad()
    def _keep_units(self, units: torch.Tensor) -> None:
        units = units.to(self.fc1.weight.device)
        keep_outputs(self.fc1, units)
        keep_gated_inputs(self.fc2, units, self.gate.index_select(0, units))
        self.gate = None  # folded into fc2


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
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
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


@MODELS.register("vit")
def vit(
    num_classes: int, image_size: int, in_chans: int = 3, preset: str | None = "small32", **kwargs
) -> VisionTransformer:
    return VisionTransformer(num_classes, image_size, in_chans, **resolve_preset(PRESETS, preset, kwargs))


vit.input_modality = "image"
vit.default_data = "digits"
