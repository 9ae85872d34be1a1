import pytest
import torch

from sparse_lab.data import build_datamodule
from sparse_lab.data.moving_digits import bounce, make_videos
from sparse_lab.errors import UserError


def test_each_frame_holds_the_digit_at_a_bouncing_position():
    digits = torch.rand(6, 4, 4) + 0.1
    videos = make_videos(
        digits, num_frames=7, image_size=10, max_speed=3, noise=0.0, generator=torch.Generator().manual_seed(1)
    )
    assert videos.shape == (6, 7, 1, 10, 10)
    for i in range(6):
        corners = []
        for f in range(7):
            frame = videos[i, f, 0]
            r, c = frame.nonzero().min(0).values.tolist()
            torch.testing.assert_close(frame[r : r + 4, c : c + 4], digits[i])
            assert float(frame.sum()) == pytest.approx(float(digits[i].sum()))
            corners.append((r, c))
        assert len(set(corners)) > 1  # it moves
    assert bounce(torch.tensor([0, 5, 7, 12, -2]), 6).tolist() == [0, 5, 5, 0, 2]


def test_moving_digits_datamodule_is_seeded_and_declares_video():
    a = build_datamodule("moving_digits", num_frames=3, image_size=16, digit_size=8)
    b = build_datamodule("moving_digits", num_frames=3, image_size=16, digit_size=8)
    a.setup(), b.setup()
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == (32, 3, 1, 16, 16) and y.shape == (32,)
    assert torch.equal(a.test_set.tensors[0], b.test_set.tensors[0])
    assert len(a.train_set) + len(a.val_set) + len(a.test_set) == 1797
    assert a.info.modality == "video" and a.info.sizes == dict(image_size=16, in_chans=1, num_frames=3)
    assert a.example_input().shape == (1, 3, 1, 16, 16)
    with pytest.raises(UserError, match="digit_size"):
        build_datamodule("moving_digits", digit_size=40)
