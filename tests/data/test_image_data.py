import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sparse_lab.data import build_datamodule
from sparse_lab.errors import UserError


def test_digits_split_is_fixed_and_normalised():
    a = build_datamodule("digits", batch_size=32)
    b = build_datamodule("digits", batch_size=32)
    a.setup(), b.setup()
    sizes = [len(a.train_set), len(a.val_set), len(a.test_set)]
    assert sum(sizes) == 1797 and sizes == [1258, 270, 269]
    assert torch.equal(a.test_set.tensors[0], b.test_set.tensors[0])
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == (32, 3, 32, 32) and y.dtype == torch.long
    train_x = a.train_set.tensors[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3
    assert a.info.num_classes == 10 and a.info.sizes == {"image_size": 32, "in_chans": 3}


def test_digits_split_seed_changes_the_split():
    a = build_datamodule("digits", split_seed=0)
    b = build_datamodule("digits", split_seed=1)
    a.setup(), b.setup()
    assert not torch.equal(a.test_set.tensors[1], b.test_set.tensors[1])


def write_cifar(root, n_train=20, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", n_train) for i in range(1, 6)), ("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_cifar10_reads_the_pickle_layout(tmp_path):
    write_cifar(tmp_path)
    dm = build_datamodule("cifar10", data_dir=str(tmp_path), batch_size=8, num_workers=0, val_fraction=0.1)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (90, 10, 10)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (8,)


def test_cifar10_missing_says_where_it_looked(tmp_path):
    dm = build_datamodule("cifar10", data_dir=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(UserError, match=r"cifar10 not found: missing .*nowhere/cifar-10-batches-py/data_batch_1"):
        dm.setup()


def test_cifar10_corrupt_file_is_a_user_error(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="data_batch_3 is unreadable"):
        build_datamodule("cifar10", data_dir=str(tmp_path), num_workers=0).setup()


def write_imagefolder(root, splits=("train", "val"), classes=("cat", "dog", "eel"), per_class=3):
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((40, 48, 3), 40 * i, dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagefolder_reads_class_folders(tmp_path):
    write_imagefolder(tmp_path / "tiny")
    dm = build_datamodule(
        "imagefolder", data_dir=str(tmp_path), root="tiny", batch_size=4, image_size=32, num_workers=0
    )
    assert dm.info.num_classes == 3
    dm.setup()
    assert len(dm.train_set) == 9 and len(dm.test_set) == 9  # no test/: val serves as test
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (9, 3, 32, 32) and sorted(set(y.tolist())) == [0, 1, 2]


def test_imagefolder_missing_split_says_where_it_looked(tmp_path):
    write_imagefolder(tmp_path / "tiny", splits=("train",))
    with pytest.raises(UserError, match=r"imagefolder not found: missing .*tiny/val"):
        build_datamodule("imagefolder", data_dir=str(tmp_path), root="tiny")
