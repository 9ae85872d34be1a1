import numpy as np
import pytest
import torch

from sparse_lab.data import build_datamodule, warped_digits
from sparse_lab.data.warped_digits import SPLITS, form_ids, split_forms
from sparse_lab.errors import UserError

SMALL = dict(train_size=300, val_size=40, test_size=500, batch_size=32)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Every test renders its splits itself (the per-process cache starts empty and is put back)."""
    monkeypatch.setattr(warped_digits, "_SPLITS", {})


def labels_of_digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def test_forms_are_recovered_from_the_label_sequence():
    labels = labels_of_digits()
    forms = form_ids(labels)
    assert forms.shape == (1797,) and forms[0] == 0
    assert np.all(np.diff(forms) >= 0) and set(np.unique(np.diff(forms))) == {0, 1}  # contiguous blocks
    sizes = np.bincount(forms)
    assert len(sizes) == 14 and sizes.min() >= 110 and sizes.max() <= 135
    for start in np.flatnonzero(np.diff(forms, prepend=-1)):
        header = "".join(map(str, labels[start : start + 9]))
        assert header in ("012345678", "123456789")  # 0-9 written three times (one form lost its first 0)


def test_splits_are_whole_forms():
    forms = form_ids(labels_of_digits())
    members = split_forms(forms, val_forms=1, test_forms=5, split_seed=2)
    assert sorted(np.concatenate([members[s] for s in SPLITS]).tolist()) == list(range(1797))
    owners = {s: set(forms[members[s]].tolist()) for s in SPLITS}
    assert [len(owners[s]) for s in SPLITS] == [8, 1, 5]
    assert not (owners["train"] & owners["test"]) and not (owners["val"] & (owners["train"] | owners["test"]))
    with pytest.raises(UserError, match="leave forms to train on"):
        split_forms(forms, val_forms=4, test_forms=10, split_seed=0)


def test_no_source_digit_is_shared_between_splits():
    dm = build_datamodule("warped_digits", **SMALL)
    dm.setup()
    used = {}
    for split, (_, _, index, clutter) in warped_digits._SPLITS[next(iter(warped_digits._SPLITS))].items():
        assert torch.equal(index, dm.sources[split])
        used[split] = set(index.tolist()) | set(clutter.flatten().tolist())  # the digit and its neighbours
    assert not used["train"] & used["test"]
    assert not used["train"] & used["val"] and not used["val"] & used["test"]


def test_shapes_sizes_and_labels():
    dm = build_datamodule("warped_digits", **SMALL)
    dm.setup()
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [300, 40, 500]
    x, y = dm.test_set.tensors
    assert x.shape == (500, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(x[:, 0], x[:, 2])  # grey, repeated over channels
    assert set(y.tolist()) == set(range(10))
    train_x = dm.train_set.tensors[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3
    # Sources of a split are used in turn: each 0 or 1 more times than another.
    counts = torch.bincount(dm.sources["test"])
    assert counts[counts > 0].max() - counts[counts > 0].min() <= 1
    assert dm.info.num_classes == 10 and dm.info.sizes == {"image_size": 24, "in_chans": 3}
    assert dm.example_input().shape == (1, 3, 24, 24)
    batches = list(dm.train_dataloader())
    assert len(batches) == 300 // 32 and batches[0][0].shape == (32, 3, 24, 24)
    other = build_datamodule("warped_digits", image_size=32, in_chans=1, train_size=20, val_size=10, test_size=10)
    other.setup()
    assert other.test_set.tensors[0].shape == (10, 1, 32, 32)


def test_rendering_is_deterministic_for_a_seed():
    a = build_datamodule("warped_digits", **SMALL)
    a.setup()
    warped_digits._SPLITS.clear()  # render again, not from the cache
    b = build_datamodule("warped_digits", **SMALL)
    b.setup()
    for split in ("train_set", "val_set", "test_set"):
        assert torch.equal(getattr(a, split).tensors[0], getattr(b, split).tensors[0])
        assert torch.equal(getattr(a, split).tensors[1], getattr(b, split).tensors[1])
    c = build_datamodule("warped_digits", **{**SMALL, "seed": 1})
    c.setup()
    assert not torch.equal(a.test_set.tensors[0], c.test_set.tensors[0])


def test_test_split_does_not_depend_on_the_training_size():
    a = build_datamodule("warped_digits", **SMALL)
    b = build_datamodule("warped_digits", **{**SMALL, "train_size": 100})
    a.setup(), b.setup()
    assert torch.equal(a.sources["test"], b.sources["test"])
    # Normalisation uses the training split's statistics; the rendered test images are the same.
    raw = [v["test"][0] for v in warped_digits._SPLITS.values()]
    assert len(raw) == 2 and torch.equal(raw[0], raw[1])


def test_an_epoch_is_a_draw_of_epoch_size_images():
    dm = build_datamodule("warped_digits", **{**SMALL, "epoch_size": 96})
    dm.setup()
    assert sum(len(y) for _, y in dm.train_dataloader()) == 96
    assert len(dm.val_dataloader().dataset) == 40  # evaluation sees every image


def test_bad_values_are_user_errors():
    with pytest.raises(UserError, match="test_size"):
        build_datamodule("warped_digits", test_size=0)
    with pytest.raises(UserError, match="scale"):
        build_datamodule("warped_digits", scale=(0.9, 0.5))
    with pytest.raises(UserError, match="leave forms to train on"):
        build_datamodule("warped_digits", val_forms=3, test_forms=11, **SMALL).setup()


def test_trains_in_a_tiny_run(make_cfg, tmp_path):
    from sparse_lab.experiment import run

    cfg = make_cfg(
        "data=warped_digits",
        "data.train_size=128",
        "data.val_size=32",
        "data.test_size=1400",  # more images than the test forms hold digits: sources rendered twice
        "trainer.limit_test_batches=1.0",
        "data.batch_size=16",
        "model.preset=tiny",
        "sparsity=dense",
    )
    results = run(cfg, tmp_path)
    assert results["status"] == "completed"
    assert 0.0 <= results["metrics"]["test/acc"] <= 1.0
    # The test items are grouped by the source digit they were rendered from (renderings fail together).
    record = results["test_items"]
    with np.load(tmp_path / record["file"]) as items:
        assert record["n"] == 1400 and len(items["groups"]) == 1400
        assert record["groups"] == len(np.unique(items["groups"])) < 1400
        assert int(items["values"].sum()) == round(results["metrics"]["test/acc"] * 1400)
