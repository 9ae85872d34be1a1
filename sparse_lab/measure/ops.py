"""Multiply-accumulates of one aten operator call, from the shapes of its arguments (FLOPs = 2 x MACs).

A formula returns the op's *terms*: ``Term(kind, macs, operands)``, where ``operands`` are the tensors
multiplied that may be weights (the counter checks which one is a model parameter and reads its zeros).
Fused ops that run several products (multi-head attention's fast path) return one term per product.

Formulas are keyed by operator (all overloads, ``.out`` included); shapes only, so they hold on every
device. Attention counts the two products of every query with every key (Q·Kᵀ and A·V, masked or causal
entries included, as FLOP counters do); softmax and normalisation are counted as elements elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

aten = torch.ops.aten


@dataclass(frozen=True)
class Term:
    # "conv" | "matmul" | "attention" (the counter turns "matmul" with a weight operand into "linear");
    # "norm" | "elementwise": element counts of a fused op's other work, not MACs
    kind: str
    macs: int
    operands: tuple[torch.Tensor, ...] = ()  # multiplied tensors that may be (views of) weights


Formula = Callable[[dict, object], list[Term]]
FORMULAS: dict[object, Formula] = {}

# Normalisation ops (counted as input elements) and softmax (counted as elements, like pointwise ops).
NORM_OPS = {
    aten.native_batch_norm,
    aten._native_batch_norm_legit,
    aten._native_batch_norm_legit_no_training,
    aten.native_layer_norm,
    aten.native_group_norm,
    aten._fused_rms_norm,
}
SOFTMAX_OPS = {aten._softmax, aten._safe_softmax, aten._log_softmax}
# Pointwise-tagged ops that only move data (``.contiguous()``, dtype casts): not elementwise work.
COPY_OPS = {aten.clone, aten.copy, aten.copy_, aten._to_copy, aten.lift_fresh_copy}


def formula(*ops):
    def register(fn: Formula) -> Formula:
        for op in ops:
            FORMULAS[op] = fn
        return fn

    return register


def bind(func, args: tuple, kwargs: dict) -> dict:
    """The op's arguments by schema name (aten calls mix positional and keyword arguments)."""
    bound = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args) and not arg.kwarg_only:
            bound[arg.name] = args[i]
        else:
            bound[arg.name] = kwargs.get(arg.name, arg.default_value if arg.has_default_value() else None)
    return bound


@formula(aten.convolution)
def convolution(a: dict, out) -> list[Term]:
    # weight[0] holds what one output element reads (C_in/groups x kernel); a transposed conv's weight is
    # [C_in, C_out/groups, k...], so weight[0] is what one *input* element writes.
    x, w = a["input"], a["weight"]
    elements = x.numel() if a["transposed"] else out.numel()
    return [Term("conv", elements * (w.numel() // w.shape[0]), (w, x))]


@formula(aten.mm, aten._int_mm)
def mm(a: dict, out) -> list[Term]:
    x, y = a["self"], a["mat2"]
    return [Term("matmul", x.shape[0] * x.shape[1] * y.shape[1], (x, y))]


@formula(aten.addmm, aten._addmm_activation)
def addmm(a: dict, out) -> list[Term]:
    x, y = a["mat1"], a["mat2"]
    return [Term("matmul", x.shape[0] * x.shape[1] * y.shape[1], (x, y))]


@formula(aten.bmm)
def bmm(a: dict, out) -> list[Term]:
    x, y = a["self"], a["mat2"]
    return [Term("matmul", x.shape[0] * x.shape[1] * x.shape[2] * y.shape[2], (x, y))]


@formula(aten.baddbmm)
def baddbmm(a: dict, out) -> list[Term]:
    x, y = a["batch1"], a["batch2"]
    return [Term("matmul", x.shape[0] * x.shape[1] * x.shape[2] * y.shape[2], (x, y))]


@formula(aten.mv)
def mv(a: dict, out) -> list[Term]:
    return [Term("matmul", a["self"].numel(), (a["self"], a["vec"]))]


@formula(aten.addmv)
def addmv(a: dict, out) -> list[Term]:
    return [Term("matmul", a["mat"].numel(), (a["mat"], a["vec"]))]


@formula(aten.dot, aten.vdot)
def dot(a: dict, out) -> list[Term]:
    x = a["self"]
    return [Term("matmul", x.numel(), (x, a["tensor"] if "tensor" in a else a["other"]))]


@formula(aten._euclidean_dist)
def euclidean_dist(a: dict, out) -> list[Term]:
    # torch.cdist (p=2, large sets): one matmul of [x, |x|², 1] by [-2y, 1, |y|²], so M + 2 per pair.
    x, y = a["x1"], a["x2"]
    return [Term("matmul", out.numel() * (x.shape[-1] + 2), (x, y))]


@formula(aten._cdist_forward)
def cdist(a: dict, out) -> list[Term]:
    return [Term("matmul", out.numel() * a["x1"].shape[-1], (a["x1"], a["x2"]))]


def _attention(queries: int, keys: int, e: int, e_v: int) -> Term:
    """Q·Kᵀ and A·V: each of ``queries`` (batch x heads x length) meets every key over E, then every
    value over E_v."""
    return Term("attention", queries * keys * (e + e_v))


@formula(
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
    aten._scaled_dot_product_fused_attention_overrideable,
)
def sdpa(a: dict, out) -> list[Term]:
    q, k, v = a["query"], a["key"], a["value"]  # [B, H, L, E]; grouped-query keys may have fewer heads
    return [_attention(math.prod(q.shape[:-1]), k.shape[-2], q.shape[-1], v.shape[-1])]


@formula(aten._efficient_attention_forward, aten._flash_attention_forward)
def attention_forward(a: dict, out) -> list[Term]:
    q, k, v = a["query"], a["key"], a["value"]  # the CUDA kernels under SDPA: [B, L, H, E]
    return [_attention(math.prod(q.shape[:-1]), k.shape[1], q.shape[-1], v.shape[-1])]


def _projection(x: torch.Tensor, w: torch.Tensor) -> Term:
    """``x`` [..., D_in] times ``wᵀ`` (w [D_out, D_in]), as a Linear layer inside a fused op computes it."""
    return Term("matmul", math.prod(x.shape[:-1]) * w.numel(), (w,))


def _multi_head_attention(q, k, v, d: int, qkv_weight: torch.Tensor, proj_weight: torch.Tensor) -> list[Term]:
    """Packed in-projection (q rows on the queries, k and v rows on the keys and values; [B, L, D]), the
    attention products (per head over D / heads channels: D in all), the out-projection."""
    return [
        _projection(q, qkv_weight[:d]),
        _projection(k, qkv_weight[d : 2 * d]),
        _projection(v, qkv_weight[2 * d :]),
        _attention(q.shape[0] * q.shape[1], k.shape[1], d, d),
        _projection(q, proj_weight),
    ]


@formula(aten._native_multi_head_attention)
def native_mha(a: dict, out) -> list[Term]:
    # nn.MultiheadAttention's fast path (eval, no grad, batch first).
    return _multi_head_attention(a["query"], a["key"], a["value"], a["embed_dim"], a["qkv_weight"], a["proj_weight"])


@formula(aten._transformer_encoder_layer_fwd)
def encoder_layer(a: dict, out) -> list[Term]:
    # nn.TransformerEncoderLayer's fast path: self-attention block and feed-forward block in one op, with
    # two layer norms, the activation and two residual additions.
    x, d = a["src"], a["embed_dim"]
    w1, w2 = a["ffn_weight_1"], a["ffn_weight_2"]
    tokens = math.prod(x.shape[:-1])
    return [
        *_multi_head_attention(x, x, x, d, a["qkv_weight"], a["proj_weight"]),
        _projection(x, w1),
        Term("matmul", tokens * w2.numel(), (w2,)),
        Term("norm", 2 * x.numel()),
        Term("elementwise", tokens * w1.shape[0] + 2 * x.numel()),
    ]
