import torch

from sparse_lab.measure import count_macs, parameter_counts
from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method


def test_mobilenet_v1_224_matches_published_size():
    # Howard et al. 2017, Table 8: 1.0 MobileNet-224 has 569M mult-adds and 4.2M parameters.
    model = build_model("mobilenet_v1", modality="image", num_classes=1000, image_size=224)
    macs = count_macs(model, torch.zeros(1, 3, 224, 224)).dense
    total, _ = parameter_counts(model)
    assert 565e6 <= macs <= 573e6
    assert 4.15e6 <= total <= 4.25e6


def test_mobilenet_v1_small_input_stem_and_width_multiplier():
    model = build_model("mobilenet_v1", modality="image", num_classes=10, image_size=32, width_mult=0.5)
    assert model.features[0][0].stride == (1, 1)
    assert model.features[-1].pw[0].out_channels == 512 and model.classifier[-1].in_features == 512
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    big = build_model("mobilenet_v1", modality="image", num_classes=10, image_size=224, width_mult=0.5)
    assert big.features[0][0].stride == (2, 2)


def test_fast_sparse_convnets_prunes_exactly_the_pointwise_convs(make_cfg):
    cfg = make_cfg("experiment=fast_sparse_convnets")
    assert cfg.model.name == "mobilenet_v1" and cfg.sparsity.name == "gmp" and cfg.sparsity.sparsity == 0.9
    model = build_model("mobilenet_v1", modality="image", num_classes=10, image_size=32)
    method = build_method("gmp", **{k: v for k, v in cfg.sparsity.items() if k != "name"})
    method.attach(model)
    pointwise = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [p.name for p in method.params] == [f"{n}.weight" for n in pointwise] and len(pointwise) == 13
    assert all(".pw." in p.name for p in method.params)
