"""Schema of ``configs/logger/*.yaml``: CSV on or off, W&B's settings or null."""

from __future__ import annotations

from sparse_lab.schema.fields import Bool, Choice, Float, Int, List, Schema, Section, Str, Union

WANDB_MODES = ("auto", "online", "offline")


class Wandb(Schema):
    """``logger.wandb`` (sparse_lab/loggers.py)."""

    project = Str()
    entity = Str(nullable=True)
    mode = Choice(*WANDB_MODES)
    tags = List(Union(Str(), Int(), Float()))
    group = Str(nullable=True)


class Logger(Schema):
    csv = Bool()
    wandb = Section(Wandb, nullable=True)
