"""Dense MACs agree with the operation counts torchvision publishes for its classification models.

``weights.meta["_ops"]`` is GFLOPS counted as multiply-adds (one per MAC) at the weights' crop size; it
is read from the enum, nothing is downloaded, and the models are built with ``weights=None``. The set
covers convolutions (ResNet), depthwise convolutions (MobileNetV2), nn.MultiheadAttention's fused fast
path (ViT, eval without gradients) and explicit window-attention matmuls (Swin).
"""

import pytest
import torch
import torchvision.models as tvm

from sparse_lab.measure import count_macs
from sparse_lab.models import build_model

MODELS = [
    ("resnet18", tvm.ResNet18_Weights.IMAGENET1K_V1),
    ("mobilenet_v2", tvm.MobileNet_V2_Weights.IMAGENET1K_V1),
    ("vit_b_16", tvm.ViT_B_16_Weights.IMAGENET1K_V1),
    ("swin_t", tvm.Swin_T_Weights.IMAGENET1K_V1),
]


def published_macs(weights) -> float:
    return weights.meta["_ops"] * 1e9


@pytest.mark.parametrize("name, weights", MODELS, ids=[name for name, _ in MODELS])
def test_dense_macs_match_torchvision_published_ops(name, weights):
    model = getattr(tvm, name)(weights=None)
    size = weights.transforms().crop_size[0]
    count = count_macs(model, torch.zeros(1, 3, size, size))
    assert count.dense == pytest.approx(published_macs(weights), rel=0.01)
    if name in ("vit_b_16", "swin_t"):  # attention is counted, fused or not (~4% and ~3% of these models)
        attention = sum(r.dense for r in count.layers if r.kind in ("attention", "matmul"))
        assert attention > 0.02 * count.dense


def test_our_vit_b16_counts_what_torchvision_vit_b_16_computes():
    # Same geometry (patch 16, width 768, 12 blocks, 197 tokens); ours runs F.scaled_dot_product_attention.
    model = build_model("vit", modality="image", num_classes=1000, image_size=224, preset="vit_b16")
    count = count_macs(model, torch.zeros(1, 3, 224, 224))
    assert count.dense == pytest.approx(published_macs(tvm.ViT_B_16_Weights.IMAGENET1K_V1), rel=0.001)
