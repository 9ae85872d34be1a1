import torch
from torch import nn

from sparse_lab.measure import count_macs, parameter_counts
from sparse_lab.models import build_model
from sparse_lab.models.vit import Attention, Block


def test_conv_and_linear_macs_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x8 out: 8*8*8 outputs x 3*3*3 = 13,824
        nn.Conv2d(8, 8, 3, stride=2, groups=8),  # 3x3 out: 8*3*3 outputs x 1*3*3 = 648
        nn.Flatten(),
        nn.Linear(72, 10),  # 10 x 72 = 720
    )
    rows = count_macs(net, torch.zeros(1, 3, 8, 8))
    assert [r.dense for r in rows] == [13_824, 648, 720]
    assert [r.effective for r in rows] == [r.dense for r in rows]


def test_effective_macs_skip_zero_weights():
    linear = nn.Linear(10, 4, bias=False)
    with torch.no_grad():
        linear.weight[:, :5] = 0  # half the weights
    (row,) = count_macs(linear, torch.zeros(1, 10))
    assert (row.dense, row.effective) == (40, 20)


def test_attention_block_macs_by_hand():
    # Tokens N=5, width D=8, MLP hidden 16: qkv 5*8*24=960, attention matmuls 2*5*5*8=400,
    # proj 5*8*8=320, fc1 5*8*16=640, fc2 5*16*8=640 -> 2,960.
    block = Block(dim=8, num_heads=2, mlp_ratio=2.0)
    rows = {r.name: r.dense for r in count_macs(block, torch.zeros(1, 5, 8))}
    assert rows == {"attn": 400, "attn.qkv": 960, "attn.proj": 320, "mlp.fc1": 640, "mlp.fc2": 640}


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
    macs = sum(r.dense for r in count_macs(model, torch.zeros(1, 3, 224, 224)))
    total, _ = parameter_counts(model)
    assert 295e6 <= macs <= 305e6
    assert 3.45e6 <= total <= 3.55e6


def test_vit_s16_matches_published_size():
    # DeiT-S / ViT-S/16 at 224: 22.05M parameters, 4.6 GMACs (4.25 G conv+linear + attention matmuls).
    model = build_model("vit", modality="image", num_classes=1000, image_size=224, preset="vit_s16")
    total, _ = parameter_counts(model)
    rows = count_macs(model, torch.zeros(1, 3, 224, 224))
    assert abs(total - 22.05e6) < 0.05e6
    assert 4.55e9 <= sum(r.dense for r in rows) <= 4.65e9
