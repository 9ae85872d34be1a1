"""ModelNet40 loader on tiny files in the modelnet40_normal_resampled layout."""

import numpy as np
import pytest
import torch

from sparse_lab.data import build_datamodule
from sparse_lab.errors import UserError


def write_layout(root, classes=("airplane", "chair"), per_class=3, points=20):
    folder = root / "modelnet40_normal_resampled"
    folder.mkdir()
    (folder / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    rng = np.random.default_rng(0)
    train, test = [], []
    for ci, cls in enumerate(classes):
        (folder / cls).mkdir()
        for i in range(1, per_class + 1):
            sample = f"{cls}_{i:04d}"
            xyz = rng.normal(size=(points, 3)) * (ci + 1) + 5.0  # off-centre, class-dependent size
            normals = rng.normal(size=(points, 3))
            np.savetxt(folder / cls / f"{sample}.txt", np.hstack([xyz, normals]), delimiter=",", fmt="%.6f")
            (test if i == per_class else train).append(sample)
    (folder / "modelnet40_train.txt").write_text("\n".join(train) + "\n")
    (folder / "modelnet40_test.txt").write_text("\n".join(test) + "\n")
    return folder


def test_reads_the_resampled_layout(tmp_path):
    write_layout(tmp_path)
    dm = build_datamodule(
        "modelnet40", data_dir=str(tmp_path), num_classes=2, num_points=16, val_fraction=0.25, batch_size=2
    )
    assert dm.info.modality == "point_cloud" and dm.info.sizes == {"in_chans": 4, "grid_size": 40}
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 4 and len(dm.test_set) == 2
    assert sorted(int(dm.test_set[i][1]) for i in range(2)) == [0, 1]  # labels by shape_names order
    pts = dm.test_set.points
    assert pts.shape == (2, 16, 3)
    torch.testing.assert_close(pts.mean(1), torch.zeros(2, 3), atol=1e-5, rtol=0)  # centred
    torch.testing.assert_close(pts.norm(dim=2).amax(1), torch.ones(2))  # unit ball
    x, y = next(iter(dm.test_dataloader()))
    assert x.batch_size == 2 and x.features.shape[1] == 4 and y.tolist() == [0, 1]


def test_first_points_and_cache(tmp_path):
    folder = write_layout(tmp_path, points=30)
    from sparse_lab.data.modelnet40 import read_split

    pts, labels, names = read_split(folder, "test", 10)
    raw = np.loadtxt(folder / "airplane" / "airplane_0003.txt", delimiter=",")[:10, :3]
    raw = raw - raw.mean(0)
    np.testing.assert_allclose(pts[0].numpy(), raw / np.linalg.norm(raw, axis=1).max(), atol=1e-5)
    assert names == ["airplane", "chair"] and (folder / ".sparse_lab_test_10.npz").is_file()
    again, labels2, _ = read_split(folder, "test", 10)
    assert torch.equal(again, pts) and torch.equal(labels, labels2)


def test_missing_dataset_is_one_line_naming_the_path(tmp_path):
    dm = build_datamodule("modelnet40", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(UserError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nowhere" / "modelnet40_normal_resampled") in message


def test_missing_sample_file_is_a_user_error(tmp_path):
    folder = write_layout(tmp_path)
    (folder / "chair" / "chair_0001.txt").unlink()
    with pytest.raises(UserError, match="chair_0001.txt"):
        build_datamodule("modelnet40", data_dir=str(tmp_path), num_classes=2).setup("fit")
