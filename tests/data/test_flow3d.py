import numpy as np
import pytest
import torch

from sparse_lab.data import build_datamodule
from sparse_lab.data.flow3d import generate_scene
from sparse_lab.errors import UserError


def small(**kwargs):
    dm = build_datamodule("flow3d", num_points=256, sizes=[4, 2, 3], **kwargs)
    dm.setup()
    return dm


def test_pairs_are_seeded_sized_and_disjoint_across_splits():
    a, b = small(), small()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (4, 2, 3)
    s = a.test_set[1]
    assert set(s) == {"pc1", "pc2", "flow"} and all(
        v.shape == (256, 3) and v.dtype == torch.float32 for v in s.values()
    )
    assert all(torch.equal(s[k], b.test_set[1][k]) for k in s)  # same seed, same scene
    assert not torch.equal(a.train_set[1]["pc1"], a.test_set[1]["pc1"])  # splits never share a scene
    assert not torch.equal(small(seed=1).test_set[1]["pc1"], s["pc1"])
    assert a.info.modality == "point_cloud_pair" and a.info.task == "scene_flow" and a.info.sizes == {"num_points": 256}


def test_flow_is_exact_rigid_motion_and_second_frame_is_an_independent_sample():
    scene = generate_scene(
        np.random.default_rng(0),
        num_points=512,
        noise=0.0,
        num_objects=(1, 1),
        dynamic_fraction=0.0,
        ego_rotation_deg=0.0,
    )
    # One static solid, pure ego translation: every point moves by the same vector.
    flow = scene["flow"]
    assert np.allclose(flow, flow[0], atol=1e-9) and np.linalg.norm(flow[0]) > 0
    # pc2 holds the moved surface, but sampled independently: not pc1 + flow row by row.
    moved = scene["pc1"] + flow
    assert not np.allclose(moved, scene["pc2"])
    nearest = np.linalg.norm(moved[:, None] - scene["pc2"][None], axis=-1).min(1)
    assert np.median(nearest) < 0.1  # the moved points lie on the sampled surface of frame 2


def test_scenes_have_several_motions_and_a_nonzero_baseline():
    dm = small()
    flows = torch.cat([dm.train_set[i]["flow"] for i in range(4)])
    assert 0.1 < float(flows.norm(dim=-1).mean()) < 1.5  # zero-flow EPE in a sensible range (metres)
    distinct = torch.unique(torch.round(dm.train_set[0]["flow"] * 100), dim=0)
    assert len(distinct) > 10  # rotations and several objects: not one translation


def test_batches_and_example_input():
    dm = small(batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pc1"].shape == (2, 256, 3) and batch["flow"].shape == (2, 256, 3)
    example = dm.example_input()
    assert set(example) == {"pc1", "pc2"} and example["pc1"].shape == (1, 256, 3)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="sizes"):
        build_datamodule("flow3d", sizes=[10, 0, 5])
    with pytest.raises(UserError, match="unknown flow3d option"):
        build_datamodule("flow3d", wobble=3)


def test_fresh_training_scenes_every_epoch_seeded_and_fixed_evaluation():
    dm = small(batch_size=2)
    loader = dm.train_dataloader()
    first, second = list(iter(loader.sampler)), list(iter(loader.sampler))
    assert sorted(first) == [0, 1, 2, 3] and sorted(second) == [4, 5, 6, 7]  # new scenes in epoch 2
    again = small(batch_size=2).train_dataloader().sampler
    assert list(iter(again)) == first  # the same stream in every run
    assert not torch.equal(dm.train_set[5]["pc1"], dm.train_set[1]["pc1"])
    with pytest.raises(IndexError):
        dm.test_set[3]  # evaluation splits are fixed
    fixed = small(batch_size=2, fresh_train_scenes=False)
    with pytest.raises(IndexError):
        fixed.train_set[4]
