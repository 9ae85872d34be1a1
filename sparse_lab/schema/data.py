"""Schemas of ``configs/data/*.yaml``: one class per dataset (``registered_as`` = its ``name:``).

``modality`` is what the dataset gives (checked against the model's before anything is built);
``folder`` the on-disk layout a real dataset is read from (its absence is reported before training).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from sparse_lab.schema.fields import Bool, Float, Int, List, Schema, SchemaError, Str, show

SEED = Int(ge=0, le=2**32 - 1)
FRACTION = Float(ge=0, lt=1)


def check_split(values: dict, at, *, positive: bool) -> None:
    """``split``: train / val / test fractions summing to 1 (the test part non-empty)."""
    split = values.get("split")
    if split is None:
        return
    if abs(sum(split) - 1.0) > 1e-6 or (positive and min(split) <= 0) or split[2] <= 0:
        parts = "three positive fractions" if positive else "three fractions >= 0 with a test part > 0"
        raise SchemaError(f"{at('split')} must be {parts} summing to 1 (train, val, test), got {show(split)}")


class Data(Schema):
    """Keys every built-in datamodule takes."""

    modality: ClassVar[str] = "image"
    folder: ClassVar[str | None] = None  # <data_dir>/<folder> must exist (real datasets)
    batch_size = Int(ge=1)
    num_workers = Int(ge=0)

    @classmethod
    def required_paths(cls, values: dict) -> list[Path]:
        """The folders a run reads (a missing one is one clear error before anything is built)."""
        if cls.folder is None or not isinstance(values.get("data_dir"), str):
            return []
        return [Path(values["data_dir"]) / cls.folder]

    @classmethod
    def check_files(cls, values: dict) -> None:
        for path in cls.required_paths(values):
            if not path.is_dir():
                raise SchemaError(
                    f"{cls.registered_as} not found: missing {path} (set paths.data_dir to the folder holding "
                    f"{cls.folder}/; datasets are never downloaded)"
                )


class Digits(Data):
    registered_as = "digits"
    owner = "dataset 'digits'"
    image_size = Int(ge=1)
    in_chans = Int(ge=1)
    split = List(Float(ge=0, le=1), length=3)
    split_seed = SEED

    @classmethod
    def check(cls, values, at):
        check_split(values, at, positive=True)


def check_ranges(values: dict, at, keys: tuple[str, ...]) -> None:
    """``[low, high]`` pairs with low <= high."""
    for key in keys:
        pair = values.get(key)
        if pair is not None and pair[0] > pair[1]:
            raise SchemaError(f"{at(key)} must be [low, high] with low <= high, got {show(pair)}")


class MovingDigits(Data):
    registered_as = "moving_digits"
    owner = "dataset 'moving_digits'"
    modality = "video"
    image_size = Int(ge=1)
    digit_size = Int(ge=1)
    num_frames = Int(ge=1)
    max_speed = Int(ge=1)
    noise = Float(ge=0)
    seed = SEED
    split = List(Float(ge=0, le=1), length=3)
    split_seed = SEED

    @classmethod
    def check(cls, values, at):
        check_split(values, at, positive=True)
        digit, image = values.get("digit_size"), values.get("image_size")
        if digit is not None and image is not None and digit > image:
            raise SchemaError(f"{at('digit_size')} must be <= {at('image_size')} ({image}), got {digit}")


class WarpedDigits(Data):
    registered_as = "warped_digits"
    owner = "dataset 'warped_digits'"
    image_size = Int(ge=8)
    in_chans = Int(ge=1)
    train_size = Int(ge=1)
    val_size = Int(ge=1)
    test_size = Int(ge=1)
    val_forms = Int(ge=1, le=12)  # of the 14 forms (writers) of scikit-learn's digits
    test_forms = Int(ge=1, le=12)
    epoch_size = Int(ge=1, nullable=True)
    stroke = List(Float(ge=0, le=1), length=2)
    scale = List(Float(gt=0, le=2), length=2)
    rotation = Float(ge=0, le=180)
    shear = Float(ge=0, le=2)
    aspect = Float(ge=1, le=4)
    clutter = Int(ge=0, le=8)
    clutter_intensity = List(Float(ge=0, le=1), length=2)
    contrast = List(Float(ge=0, le=1), length=2)
    background = Float(ge=0, le=1)
    noise = Float(ge=0, le=2)
    seed = SEED
    split_seed = SEED

    @classmethod
    def check(cls, values, at):
        for key in ("stroke", "scale", "clutter_intensity", "contrast"):
            low_high = values.get(key)
            if low_high is not None and low_high[0] > low_high[1]:
                raise SchemaError(f"{at(key)} must be [low, high] with low <= high, got {show(low_high)}")
        val, test = values.get("val_forms"), values.get("test_forms")
        if val is not None and test is not None and val + test > 13:
            raise SchemaError(
                f"{at('val_forms')} + {at('test_forms')} must leave forms to train on (14 forms), got {val} + {test}"
            )


class Cifar10(Data):
    registered_as = "cifar10"
    owner = "dataset 'cifar10'"
    folder = "cifar-10-batches-py"
    data_dir = Str(required=True)
    image_size = Int(ge=1)
    val_fraction = FRACTION
    split_seed = SEED
    augment = Bool()


class ImageFolder(Data):
    registered_as = "imagefolder"
    owner = "dataset 'imagefolder'"
    data_dir = Str(required=True)
    root = Str()
    image_size = Int(ge=1)

    @classmethod
    def required_paths(cls, values):
        if not isinstance(values.get("data_dir"), str):
            return []
        root = Path(values["data_dir"]) / str(values.get("root", "imagenet"))
        return [root / "train", root / "val"]

    @classmethod
    def check_files(cls, values):
        for path in cls.required_paths(values):
            if not path.is_dir():
                raise SchemaError(
                    f"imagefolder not found: missing {path} (expected <class>/<image> folders under "
                    "<paths.data_dir>/<data.root>/train and val)"
                )


class PointClouds(Data):
    modality = "point_cloud"
    voxel_size = Float(gt=0, le=1)  # clouds span [-1, 1]^3
    num_points = Int(ge=1)
    augment = Bool()


class Shapes3D(PointClouds):
    registered_as = "shapes3d"
    owner = "dataset 'shapes3d'"
    num_classes = Int(ge=2, le=12)  # the first k of the generator's 12 solids
    train_size = Int(ge=1)
    val_size = Int(ge=1)
    test_size = Int(ge=1)
    noise = Float(ge=0, lt=1)
    partial_prob = Float(ge=0, le=1)
    max_cut = Float(ge=0.1, le=0.9)
    clutter = Float(ge=0, lt=1)
    stretch = Float(ge=0, lt=1)
    scale_range = List(Float(gt=0), length=2)
    epoch_size = Int(ge=1, nullable=True)
    seed = SEED

    @classmethod
    def check(cls, values, at):
        check_ranges(values, at, ("scale_range",))


class ModelNet40(PointClouds):
    registered_as = "modelnet40"
    owner = "dataset 'modelnet40'"
    folder = "modelnet40_normal_resampled"
    data_dir = Str(required=True)
    num_classes = Int(ge=2)
    val_fraction = FRACTION
    split_seed = SEED


class SceneFlow(Data):
    modality = "point_cloud_pair"
    num_points = Int(ge=1)


class Flow3D(SceneFlow):
    registered_as = "flow3d"
    owner = "dataset 'flow3d'"
    num_points = Int(ge=16)
    sizes = List(Int(ge=1), length=3)
    seed = SEED
    fresh_train_scenes = Bool()
    eval_batch_size = Int(ge=1, nullable=True)
    # The scene generator's keys (sparse_lab/data/flow3d.py generate_scene).
    pool_factor = Int(ge=1)
    num_objects = List(Int(ge=1), length=2)
    extent = Float(gt=0)
    object_size = List(Float(gt=0), length=2)
    dynamic_fraction = Float(ge=0, le=1)
    max_translation = Float(ge=0)
    max_rotation_deg = Float(ge=0)
    ego_translation = Float(ge=0)
    ego_rotation_deg = Float(ge=0)
    noise = Float(ge=0)

    @classmethod
    def check(cls, values, at):
        check_ranges(values, at, ("num_objects", "object_size"))


class FlyingThings3D(SceneFlow):
    registered_as = "flyingthings3d"
    owner = "dataset 'flyingthings3d'"
    folder = "FlyingThings3D_subset_processed_35m"
    data_dir = Str(required=True)
    val_fraction = FRACTION
    split_seed = SEED
    sample_seed = SEED

    @classmethod
    def required_paths(cls, values):
        return [root / split for root in super().required_paths(values) for split in ("train", "val")]


class KittiSF(SceneFlow):
    registered_as = "kitti_sf"
    owner = "dataset 'kitti_sf'"
    folder = "KITTI_processed_occ_final"
    data_dir = Str(required=True)
    split = List(Float(ge=0, le=1), length=3)
    split_seed = SEED
    sample_seed = SEED

    @classmethod
    def check(cls, values, at):
        check_split(values, at, positive=False)


class DataPlugin(Schema):
    """A datamodule of your own (``_target_``): its keys are its own business."""

    open = True
    modality = None

    @classmethod
    def check_files(cls, values):
        """Yours to check."""


DATASETS = [
    Digits,
    MovingDigits,
    WarpedDigits,
    Cifar10,
    ImageFolder,
    Shapes3D,
    ModelNet40,
    Flow3D,
    FlyingThings3D,
    KittiSF,
]
