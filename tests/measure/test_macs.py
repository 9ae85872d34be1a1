import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from sparse_lab.measure import MacCount, count_macs, parameter_counts
from sparse_lab.models import build_model
from sparse_lab.models.vit import Attention, Block

aten = torch.ops.aten


class OpLog(TorchDispatchMode):
    """The aten ops a call runs (to check which path a test exercised)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


def ops_of(model, x):
    with torch.no_grad(), OpLog() as log:
        model.eval()(x)
    return log.ops


class Call(nn.Module):
    """A model whose forward is a function of its input (and of the modules passed in)."""

    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        self.layers = nn.ModuleDict(modules)

    def forward(self, x):
        return self.fn(x, **self.layers)


def test_conv_and_linear_macs_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x8 out: 8*8*8 outputs x 3*3*3 = 13,824
        nn.Conv2d(8, 8, 3, stride=2, groups=8),  # depthwise, 3x3 out: 8*3*3 outputs x 1*3*3 = 648
        nn.Flatten(),
        nn.Linear(72, 10),  # 10 x 72 = 720
    )
    count = count_macs(net, torch.zeros(1, 3, 8, 8))
    assert isinstance(count, MacCount)
    assert [(r.name, r.kind, r.dense) for r in count.layers] == [
        ("0", "conv", 13_824),
        ("1", "conv", 648),
        ("3", "linear", 720),
    ]
    assert all(r.weight is net[i].weight and r.module is net[i] for r, i in zip(count.layers, [0, 1, 3]))
    assert count.dense == count.effective == count.target == 15_192


def test_transposed_and_grouped_conv_by_hand():
    # Transposed: every input element (4 ch x 5x5) writes C_out/groups x k = 3 x 3x3 products -> 2,700.
    # Grouped 3D: 2x2x2 out x 6 ch, each reading C_in/groups x k = 2 x 2x2x2 -> 768.
    up = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    assert count_macs(up, torch.zeros(1, 4, 5, 5)).dense == 2_700
    conv3d = nn.Conv3d(4, 6, 2, stride=2, groups=2)
    assert count_macs(conv3d, torch.zeros(1, 4, 4, 4, 4)).dense == 768
    with torch.no_grad():
        up.weight[:2] = 0  # half of the input channels write nothing
    (row,) = count_macs(up, torch.zeros(1, 4, 5, 5)).layers
    assert (row.kind, row.dense, row.effective) == ("conv", 2_700, 1_350)


def test_effective_macs_skip_zero_weights_of_the_weight_operand_only():
    linear = nn.Linear(10, 4, bias=False)
    with torch.no_grad():
        linear.weight[:, :5] = 0  # half the weights
    x = torch.zeros(1, 10)  # all-zero activations are not skipped: only weight zeros count
    count = count_macs(linear, x)
    (row,) = count.layers
    assert (row.kind, row.dense, row.effective) == ("linear", 40, 20)
    assert count.table() == [dict(name="", kind="linear", macs_dense=40, macs_effective=20, macs_target=40)]


def test_a_masked_weight_swapped_in_by_a_forward_pre_hook_is_the_weight_operand():
    linear = nn.Linear(8, 4)
    torch.nn.utils.prune.l1_unstructured(linear, "weight", amount=0.75)  # weight = weight_orig * mask, per call
    (row,) = count_macs(linear, torch.randn(1, 8)).layers
    assert (row.kind, row.dense, row.effective) == ("linear", 32, 8)


def test_executed_fills_the_target_column():
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Flatten(), nn.Linear(8, 2, bias=False))
    with torch.no_grad():
        net[0].weight[0] = 0
        net[2].weight[0] = 0
    count = count_macs(net, torch.zeros(1, 1, 2, 2), executed=lambda r: r.effective if r.kind == "conv" else r.dense)
    assert [(r.dense, r.effective, r.target) for r in count.layers] == [(8, 4, 4), (16, 8, 16)]
    assert (count.dense, count.effective, count.target) == (24, 12, 20)
    assert [row["macs_target"] for row in count.table()] == [4, 16]


def test_matmuls_without_a_weight_operand_are_matmuls_and_counted_dense():
    a, b = torch.zeros(2, 3, 4), torch.zeros(2, 4, 5)  # zeros in activations are never skipped
    count = count_macs(Call(lambda x: torch.einsum("bij,bjk->bik", x, b) @ torch.ones(5) + a.sum()), a)
    assert [(r.kind, r.dense, r.effective, r.weight) for r in count.layers] == [
        ("matmul", 2 * 3 * 4 * 5 + 2 * 3 * 5, 150, None)
    ]


def test_cdist_counts_a_product_per_pair_and_coordinate():
    # Large sets take the matmul route: [x, |x|², 1] by [-2y, 1, |y|²], 3 + 2 per pair; small sets the direct one.
    big, small = torch.zeros(1, 30, 3), torch.zeros(1, 4, 3)
    assert count_macs(Call(lambda x: torch.cdist(x, torch.zeros(1, 40, 3))), big).dense == 30 * 40 * (3 + 2)
    assert count_macs(Call(lambda x: torch.cdist(x, torch.zeros(1, 5, 3))), small).dense == 4 * 5 * 3


def test_norm_and_elementwise_ops_are_element_counts_not_macs():
    net = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.ReLU(), nn.BatchNorm1d(5))
    count = count_macs(net, torch.zeros(1, 5, 8))
    assert count.dense == 5 * 8 * 8
    assert count.other == {"norm": 2 * 40, "elementwise": 40}


# -- attention: three ways of writing it count the same --------------------------------------------
D, HEADS, N = 8, 2, 5


def explicit_attention(x, qkv, proj):
    q, k, v = qkv(x).reshape(1, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) / (D // HEADS) ** 0.5, dim=-1)
    return proj((a @ v).transpose(1, 2).reshape(1, N, D))


def sdpa_attention(x, qkv, proj):
    q, k, v = qkv(x).reshape(1, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
    return proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, N, D))


def three_attentions(prune: bool):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D, HEADS, batch_first=True)
    if prune:
        with torch.no_grad():
            mha.in_proj_weight[::2] = 0  # half of q, k and v rows
            mha.out_proj.weight[:, :2] = 0  # a quarter of the out-projection
    qkv, proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
    with torch.no_grad():
        qkv.weight.copy_(mha.in_proj_weight)
        proj.weight.copy_(mha.out_proj.weight)
    explicit = Call(explicit_attention, qkv=qkv, proj=proj)
    sdpa = Call(sdpa_attention, qkv=qkv, proj=proj)
    fused = Call(lambda x, attn: attn(x, x, x, need_weights=False)[0], attn=mha)
    return explicit, sdpa, fused


@pytest.mark.parametrize("prune", [False, True])
def test_explicit_matmuls_sdpa_and_multihead_attention_count_the_same(prune):
    # qkv 5*8*24 = 960, Q.K^T and A.V 2*5*5*8 = 400, proj 5*8*8 = 320.
    explicit, sdpa, fused = three_attentions(prune)
    x = torch.randn(1, N, D)
    assert aten._scaled_dot_product_flash_attention_for_cpu in ops_of(sdpa, x)
    assert aten._native_multi_head_attention in ops_of(fused, x)  # nn.MultiheadAttention's fused fast path
    counts = [count_macs(m, x) for m in (explicit, sdpa, fused)]
    with sdpa_kernel(SDPBackend.MATH):  # the math fallback decomposes into bmm
        counts.append(count_macs(sdpa, x))
    assert [c.dense for c in counts] == [1680] * 4
    effective = 960 // 2 + 400 + 320 * 3 // 4 if prune else 1680
    assert [c.effective for c in counts] == [effective] * 4
    kinds = [[(r.kind, r.dense) for r in c.layers] for c in counts]
    assert kinds[0] == kinds[3] == [("linear", 960), ("matmul", 400), ("linear", 320)]
    assert kinds[1] == kinds[2] == [("linear", 960), ("attention", 400), ("linear", 320)]
    mha = fused.layers.attn  # its weights are read where the fused op multiplies them
    weights = [r.weight for r in counts[2].layers]
    assert weights[0] is mha.in_proj_weight and weights[1] is None and weights[2] is mha.out_proj.weight


def test_fused_cross_attention_counts_queries_and_keys_apart():
    # Queries Lq=3, keys Lk=5: q 3*8*8 = 192, k and v 2*5*8*8 = 640, 2*3*5*8 = 240, out 192.
    mha = nn.MultiheadAttention(D, HEADS, batch_first=True)
    context = torch.randn(1, 5, D)
    count = count_macs(
        Call(lambda x, attn: attn(x, context, context, need_weights=False)[0], attn=mha), torch.randn(1, 3, D)
    )
    assert [(r.name, r.kind, r.dense) for r in count.layers] == [
        ("layers.attn", "linear", 832),
        ("layers.attn", "attention", 240),
        ("layers.attn", "linear", 192),
    ]


def test_transformer_encoder_layer_fast_path_counts_like_its_layers():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, HEADS, dim_feedforward=16, batch_first=True)
    with torch.no_grad():
        layer.linear1.weight[:8] = 0
    x = torch.randn(1, N, D)
    assert aten._transformer_encoder_layer_fwd in ops_of(layer, x)
    fused = count_macs(layer, x)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        unfused = count_macs(layer, x)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    # 960 + 400 + 320 attention block, 5*8*16 + 5*16*8 = 1,280 feed-forward.
    assert fused.dense == unfused.dense == 2_960
    assert fused.effective == unfused.effective == 2_960 - 320
    assert {r.name for r in fused.layers} == {""} and {r.name for r in unfused.layers} == {
        "self_attn",
        "linear1",
        "linear2",
    }
    assert fused.other == unfused.other


@pytest.mark.parametrize(
    "op, macs",
    [
        (lambda q, k, v: aten._scaled_dot_product_efficient_attention(q, k, v, None, False), 2 * 5 * 7 * (4 + 6)),
        (lambda q, k, v: aten._scaled_dot_product_flash_attention(q, k, v), 2 * 5 * 7 * (4 + 6)),
        (lambda q, k, v: aten._scaled_dot_product_cudnn_attention(q, k, v, None, False), 2 * 5 * 7 * (4 + 6)),
        (lambda q, k, v: aten._scaled_dot_product_flash_attention_for_cpu(q, k, v), 2 * 5 * 7 * (4 + 6)),
    ],
)
def test_every_sdpa_backend_counts_both_attention_products(op, macs):
    # The CUDA backends' ops run here on meta tensors (shapes only): B=1, H=2, L=5, S=7, E=4, E_v=6.
    q, k, v = (torch.zeros(1, 2, n, e, device="meta") for n, e in [(5, 4), (7, 4), (7, 6)])
    (row,) = count_macs(Call(lambda x: op(q, k, v)), None).layers
    assert (row.kind, row.dense, row.effective) == ("attention", macs, macs)


class InvisibleProduct(nn.Module):
    """A computation aten never sees (numpy here, a custom kernel in practice) declares its MACs."""

    def forward(self, x):
        return torch.from_numpy(x.numpy() @ np.ones((4, 3), dtype=np.float32))

    def extra_macs(self, inputs, output) -> int:
        return inputs[0].shape[0] * 4 * 3


def test_modules_may_declare_macs_aten_cannot_see():
    net = nn.Sequential(InvisibleProduct(), nn.Linear(3, 2))
    count = count_macs(net, torch.zeros(2, 4))
    assert [(r.name, r.kind, r.dense, r.effective) for r in count.layers] == [
        ("0", "extra", 24, 24),
        ("1", "linear", 12, 12),
    ]


# -- the project's models --------------------------------------------------------------------------
def test_attention_block_macs_by_hand():
    # Tokens N=5, width D=8, MLP hidden 16: qkv 5*8*24=960, attention matmuls 2*5*5*8=400,
    # proj 5*8*8=320, fc1 5*8*16=640, fc2 5*16*8=640 -> 2,960.
    block = Block(dim=8, num_heads=2, mlp_ratio=2.0)
    count = count_macs(block, torch.zeros(1, 5, 8))
    assert count.by_name() == {"attn": 400, "attn.qkv": 960, "attn.proj": 320, "mlp.fc1": 640, "mlp.fc2": 640}
    assert [r.kind for r in count.layers] == ["linear", "attention", "linear", "linear", "linear"]


def test_attention_matches_reference_math():
    torch.manual_seed(0)
    attn = Attention(8, num_heads=2)
    x = torch.randn(2, 5, 8)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    expected = attn.proj(ref.transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x), expected)


def test_mobilenet_v2_224_matches_published_size():
    # Sandler et al. 2018: 300M multiply-adds, 3.4M parameters at width 1.0, 224x224.
    model = build_model("mobilenet_v2", modality="image", num_classes=1000, image_size=224)
    macs = count_macs(model, torch.zeros(1, 3, 224, 224)).dense
    total, _ = parameter_counts(model)
    assert 295e6 <= macs <= 305e6
    assert 3.45e6 <= total <= 3.55e6


def test_vit_s16_matches_published_size():
    # DeiT-S / ViT-S/16 at 224: 22.05M parameters, 4.6 GMACs (4.25 G conv+linear + attention matmuls).
    model = build_model("vit", modality="image", num_classes=1000, image_size=224, preset="vit_s16")
    total, _ = parameter_counts(model)
    count = count_macs(model, torch.zeros(1, 3, 224, 224))
    assert abs(total - 22.05e6) < 0.05e6
    assert 4.55e9 <= count.dense <= 4.65e9
    attention = sum(r.dense for r in count.layers if r.kind == "attention")
    assert attention == 12 * 2 * 197 * 197 * 384  # 12 blocks, Q.K^T and A.V over 197 tokens
