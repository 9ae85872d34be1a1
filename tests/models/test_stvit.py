import pytest
import torch

from sparse_lab.errors import UserError
from sparse_lab.measure import count_macs, parameter_counts
from sparse_lab.models import build_model
from sparse_lab.models.stvit import CrossAttention, SemanticTokenGeneration


def test_semantic_tokens_are_pooled_image_tokens_plus_global_tokens():
    stgm = SemanticTokenGeneration(dim=8, num_heads=2, mlp_ratio=2.0, grid=4, pool_size=2, num_global=3)
    with torch.no_grad():
        stgm.global_tokens.copy_(torch.arange(24.0).view(1, 3, 8))
    image = torch.randn(2, 16, 8)
    init = stgm.initial_tokens(image)
    assert init.shape == (2, 7, 8) and stgm.num_tokens == 7
    # The first pooled token averages the top-left 2x2 block of the 4x4 grid: tokens 0, 1, 4, 5.
    torch.testing.assert_close(init[:, 0], image[:, [0, 1, 4, 5]].mean(dim=1))
    torch.testing.assert_close(init[:, 4:], stgm.global_tokens.expand(2, -1, -1))
    assert stgm(image).shape == (2, 7, 8)


def test_cross_attention_matches_reference_math_and_counts_its_macs():
    torch.manual_seed(0)
    attn = CrossAttention(8, num_heads=2)
    queries, context = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    q = attn.q(queries).reshape(1, 3, 2, 4).transpose(1, 2)
    k, v = attn.kv(context).reshape(1, 5, 2, 2, 4).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    torch.testing.assert_close(attn(queries, context), attn.proj(ref.transpose(1, 2).reshape(1, 3, 8)))
    # q: 3*8*8=192, kv: 5*8*16=640, Q.K^T and A.V: 2*3*5*8=240, proj: 3*8*8=192.
    assert _macs_of_two_input_module(attn, queries, context) == {"": 240, "q": 192, "kv": 640, "proj": 192}


def _macs_of_two_input_module(module, *inputs):
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, x):
            return self.m(*inputs)

    macs = count_macs(Wrap(), torch.zeros(1)).by_name()
    return {name.removeprefix("m").removeprefix("."): n for name, n in macs.items()}


def test_stvit_forward_and_token_counts_follow_config():
    model = build_model(
        "stvit", modality="image", num_classes=10, image_size=32, pool_size=2, num_global=4, stgm_at=2, depth=5
    )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert len(model.image_blocks) == 2 and len(model.semantic_blocks) == 1 and model.stgm.num_tokens == 8
    shapes = []
    model.semantic_blocks[0].register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)) and None)
    model(torch.randn(1, 3, 32, 32))
    assert shapes == [(1, 8, 128)]
    with pytest.raises(UserError, match="stgm_at"):
        build_model("stvit", modality="image", num_classes=10, image_size=32, stgm_at=4, depth=5)


def test_stvit_s16_cuts_deit_s_macs_as_the_paper_reports():
    # Chang et al. 2023: STViT on DeiT-S ~58% fewer FLOPs than DeiT-S, same parameters. Our ViT-S/16
    # counts 4.599 GMACs and 22.05M parameters (tests/measure/test_macs.py checks it).
    stvit = build_model("stvit", modality="image", num_classes=1000, image_size=224, preset="stvit_s16")
    st_macs = count_macs(stvit, torch.zeros(1, 3, 224, 224)).dense
    assert 0.55 <= 1 - st_macs / 4.599e9 <= 0.62
    assert abs(parameter_counts(stvit)[0] - 22.05e6) < 0.05e6
