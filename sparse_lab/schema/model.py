"""Schemas of ``configs/model/*.yaml``: one class per model family, and ``model.optim`` (read by the task).

``modality`` is the input the model takes and ``default_data`` its natural dataset: a model on a
dataset of another modality is one error, naming a dataset that fits, before anything is built. Preset
names mirror each family's ``PRESETS`` (tests/test_schema.py keeps them equal).
"""

from __future__ import annotations

from typing import ClassVar

from sparse_lab.schema.fields import Bool, Choice, Choose, Float, Int, List, Schema, SchemaError, Section


class Optimizer(Schema):
    """``model.optim.optimizer``: the torch optimizer's name and keyword arguments."""

    lr = Float(gt=0, required=True)
    weight_decay = Float(ge=0)


class SGD(Optimizer):
    registered_as = "sgd"
    owner = "optimizer 'sgd'"
    momentum = Float(ge=0, lt=1)
    dampening = Float(ge=0, le=1)
    nesterov = Bool()

    @classmethod
    def check(cls, values, at):
        if values.get("nesterov") and (values.get("momentum", 0) <= 0 or values.get("dampening", 0) != 0):
            raise SchemaError(
                f"{at('nesterov')}=true needs {at('momentum')} > 0 and {at('dampening')}=0, "
                f"got momentum={values.get('momentum', 0)}, dampening={values.get('dampening', 0)}"
            )


class Adam(Optimizer):
    registered_as = "adam"
    owner = "optimizer 'adam'"
    betas = List(Float(ge=0, lt=1), length=2)
    eps = Float(gt=0)
    amsgrad = Bool()


class AdamW(Adam):
    registered_as = "adamw"
    owner = "optimizer 'adamw'"


OPTIMIZERS = [AdamW, Adam, SGD]
SCHEDULES = ("onecycle", "cosine", "constant")


class Optim(Schema):
    """``model.optim``: the task's optimizer and learning-rate schedule (sparse_lab/tasks)."""

    optimizer = Choose("optimizer", OPTIMIZERS, default="adamw")
    schedule = Choice(*SCHEDULES)
    warmup_fraction = Float(ge=0, lt=1)
    label_smoothing = Float(ge=0, lt=1)  # classification only; a scene-flow task ignores it


class Model(Schema):
    """Keys every model config may have."""

    modality: ClassVar[str | None] = "image"
    default_data: ClassVar[str | None] = "digits"
    optim = Section(Optim)


POSITIVE = Int(ge=1, nullable=True)  # a geometry value; null = the preset's


class ViT(Model):
    registered_as = "vit"
    owner = "model 'vit'"
    preset = Choice("tiny", "small32", "wide32", "vit_ti16", "vit_s16", "vit_b16", nullable=True)
    patch_size = POSITIVE
    embed_dim = POSITIVE
    depth = POSITIVE
    num_heads = POSITIVE
    mlp_ratio = Float(gt=0, nullable=True)


class STViT(ViT):
    registered_as = "stvit"
    owner = "model 'stvit'"
    preset = Choice("tiny", "small32", "stvit_ti16", "stvit_s16", "stvit_b16", nullable=True)
    depth = Int(ge=2, nullable=True)  # the STGM itself takes two layers
    stgm_at = Int(ge=0, nullable=True)
    pool_size = POSITIVE
    num_global = Int(ge=0, nullable=True)
    first_layer_window = Int(ge=0, nullable=True)  # 0 = global attention; null = the preset's
    pool = Choice("max", "avg")
    second_layer_keys = Choice("semantic_and_image", "image")
    layer_scale = Float(gt=0, nullable=True)  # null = no layer scale


class MobileNet(Model):
    width_mult = Float(gt=0)
    dropout = Float(ge=0, lt=1)


class MobileNetV1(MobileNet):
    registered_as = "mobilenet_v1"
    owner = "model 'mobilenet_v1'"


class MobileNetV2(MobileNet):
    registered_as = "mobilenet_v2"
    owner = "model 'mobilenet_v2'"


class DeltaCNN(Model):
    registered_as = "delta_cnn"
    owner = "model 'delta_cnn'"
    modality = "video"
    default_data = "moving_digits"
    channels = List(Int(ge=1), min_length=1)
    delta = Bool()
    delta_step = Float(gt=0)
    delta_penalty = Float(ge=0)


class E3DSNN(Model):
    registered_as = "e3dsnn"
    owner = "model 'e3dsnn'"
    modality = "point_cloud"
    default_data = "shapes3d"
    preset = Choice("tiny", "paper_t", "small", nullable=True)
    embed_dim = POSITIVE
    channels = List(Int(ge=1), min_length=1, nullable=True)
    depths = List(Int(ge=0), min_length=1, nullable=True)
    levels = Int(ge=1)
    spiking = Bool()  # false: the ANN twin (clipped-ReLU neurons, all MACs)

    @classmethod
    def check(cls, values, at):
        channels, depths = values.get("channels"), values.get("depths")
        if channels is not None and depths is not None and len(channels) != len(depths):
            raise SchemaError(
                f"{at('channels')} and {at('depths')} must have the same length (one per stage), "
                f"got {len(channels)} and {len(depths)}"
            )


class SCTN(Model):
    registered_as = "sctn"
    owner = "model 'sctn'"
    modality = "point_cloud_pair"
    default_data = "flow3d"
    preset = Choice("tiny", "small", "paper", nullable=True)
    channels = List(Int(ge=1), length=3, nullable=True)
    voxel_size = Float(gt=0, nullable=True)
    interp_k = POSITIVE
    num_heads = POSITIVE
    graph_k = POSITIVE
    refine_width = POSITIVE
    nb_iter = POSITIVE
    consistency_k = POSITIVE
    max_distance = Float(gt=0, nullable=True)
    init_flow_weight = Float(ge=0, nullable=True)
    consistency_weight = Float(ge=0)
    consistency_tau = Float(gt=0)
    consistency_warmup_epochs = Int(ge=0)


class ModelPlugin(Model):
    """A model of your own (``_target_``): ``optim`` is read by the project; every other key is yours."""

    open = True
    modality = None
    default_data = None


MODELS = [ViT, STViT, MobileNetV1, MobileNetV2, DeltaCNN, E3DSNN, SCTN]
