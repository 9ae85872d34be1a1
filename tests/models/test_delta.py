import pytest
import torch

from sparse_lab.errors import UserError
from sparse_lab.models import build_model
from sparse_lab.models.delta import Accumulate, DeltaActivation


def test_delta_layer_on_a_hand_made_sequence():
    # One sample, T=5 frames, 3 features; time along dim 1. Step 0.5: Q rounds to multiples of 0.5.
    a = torch.tensor([[[1.0, 0.0, 2.2], [1.0, 0.0, 2.2], [1.6, 0.1, 2.2], [1.6, 0.1, 2.2], [0.0, 3.0, 2.3]]])
    delta = DeltaActivation(step=0.5, time_dim=1)(a)
    expected = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.5, 3.0, 0.5]]])
    torch.testing.assert_close(delta, expected, rtol=0, atol=0)
    # Zero exactly where the (quantized) input does not change; the sum over time rebuilds Q(a_t).
    torch.testing.assert_close(delta.cumsum(1), torch.round(a / 0.5) * 0.5)


def test_delta_layer_counts_zero_deltas_also_when_disabled():
    a = torch.tensor([[[1.0], [1.0], [2.0], [2.0]]])
    on, off = DeltaActivation(1.0, time_dim=1), DeltaActivation(1.0, time_dim=1, enabled=False)
    assert torch.equal(off(a), a)
    assert on.activation_zeros((a,), on(a)) == (2, 4) == off.activation_zeros((a,), off(a))


def test_delta_gradient_is_straight_through_and_penalty_is_recorded():
    layer = DeltaActivation(0.5, time_dim=1).train()
    a = torch.tensor([[[0.2], [0.9]]], requires_grad=True)
    layer(a).sum().backward()
    # sum_t delta_t telescopes to Q(a_T): the gradient reaches the last frame only.
    assert a.grad.flatten().tolist() == [0.0, 1.0]
    assert layer.l1 is not None and layer.l1.item() == pytest.approx((0.0 + 1.0) / 2)


def test_accumulate_restores_the_layer_output_on_quantized_input():
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    a = torch.randn(2, 4, 3)
    delta = DeltaActivation(0.25, time_dim=1)(a)
    torch.testing.assert_close(Accumulate(linear, time_dim=1)(delta), linear(torch.round(a / 0.25) * 0.25))


def test_delta_cnn_keeps_its_function_and_adds_a_penalty():
    torch.manual_seed(0)
    with_delta = build_model(
        "delta_cnn",
        modality="video",
        num_classes=10,
        image_size=16,
        in_chans=1,
        num_frames=3,
        channels=[4, 8],
        delta_step=1e-4,
    )
    without = build_model(
        "delta_cnn",
        modality="video",
        num_classes=10,
        image_size=16,
        in_chans=1,
        num_frames=3,
        channels=[4, 8],
        delta=False,
    )
    without.load_state_dict(with_delta.state_dict())
    x = torch.randn(2, 3, 1, 16, 16)
    with_delta.eval(), without.eval()
    torch.testing.assert_close(with_delta(x), without(x), atol=1e-3, rtol=0)
    with_delta.train(), without.train()
    y = torch.zeros(2, dtype=torch.long)
    terms = with_delta.auxiliary_losses(with_delta(x), y, epoch=0)
    assert set(terms) == {"delta_l1"} and terms["delta_l1"].item() > 0
    assert without.auxiliary_losses(without(x), y, epoch=0) == {}
    with pytest.raises(UserError, match="video input"):
        build_model("delta_cnn", modality="image", num_classes=10, image_size=16)
