"""Classification: cross-entropy, top-1 accuracy (torchmetrics), optimizer and schedule from config."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sparse_lab.errors import UserError
from sparse_lab.tasks import TASKS

OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "adam": torch.optim.Adam}
SCHEDULES = ("onecycle", "cosine", "constant")
# For a model config without `optim:` (e.g. a plug-in model): a safe AdamW for small models.
DEFAULT_OPTIMIZER = {"name": "adamw", "lr": 1.0e-3, "weight_decay": 0.05}


def auxiliary_losses(model: nn.Module, output, target, epoch: int) -> dict[str, torch.Tensor]:
    """The model's own weighted loss terms (``protocols.AuxiliaryLosses``), empty when it declares none."""
    if not hasattr(model, "auxiliary_losses"):
        return {}
    return {name: term for name, term in model.auxiliary_losses(output, target, epoch).items() if term is not None}


@TASKS.register("classification")
class ClassificationTask(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: dict | None = None,
        schedule: str = "onecycle",
        warmup_fraction: float = 0.1,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.optimizer_cfg = dict(optimizer or DEFAULT_OPTIMIZER)
        name = self.optimizer_cfg.get("name", "adamw")
        if name not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        self.schedule, self.warmup_fraction, self.label_smoothing = schedule, warmup_fraction, label_smoothing
        self.metrics = nn.ModuleDict(
            {split: MulticlassAccuracy(num_classes, average="micro") for split in ("train_acc", "val_acc", "test_acc")}
        )

    def forward(self, x) -> torch.Tensor:
        """``x`` is whatever the model takes: an image tensor, a voxelized point-cloud batch, ..."""
        return self.model(x)

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        acc = self.metrics[f"{split}_acc"]
        acc(logits, y)
        if split == "test":  # item by item, for comparisons that count the test set's sampling error
            self._test_items.append((logits.argmax(1) == y, y))
        train = split == "train"
        # Epoch means of val/test loss averaged over ranks under DDP (a no-op on one process).
        self.log(
            f"{split}/loss",
            loss,
            on_step=train,
            on_epoch=not train,
            prog_bar=train,
            batch_size=len(y),
            sync_dist=not train,
        )
        self.log(f"{split}/acc", acc, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=len(y))
        # A model may add training terms of its own (e.g. the activation-sparsity L1 of Delta layers).
        if train:
            for name, term in auxiliary_losses(self.model, logits, y, self.current_epoch).items():
                self.log(f"train/loss_{name}", term, on_step=True, on_epoch=False, batch_size=len(y))
                loss = loss + term
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_test_epoch_start(self) -> None:
        self._test_items: list[tuple[torch.Tensor, torch.Tensor]] = []

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def test_items(self) -> dict | None:
        """The last test's items in loader order (``protocols.TestItems``): right or wrong, and the label."""
        if not getattr(self, "_test_items", None):
            return None
        correct, labels = (torch.cat(parts).cpu().numpy() for parts in zip(*self._test_items))
        return {"metric": "test/acc", "values": correct.astype("uint8"), "key": labels}

    def configure_optimizers(self):
        cfg = dict(self.optimizer_cfg)
        optimizer_cls = OPTIMIZERS[cfg.pop("name", "adamw")]
        # Norms and biases are not weight-decayed (standard for transformers; harmless for CNNs).
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        weight_decay = cfg.pop("weight_decay", 0.0)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = optimizer_cls(groups, **cfg)
        if self.schedule == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.schedule == "onecycle" and total >= 4:
            # torch's OneCycleLR divides by the warm-up's length in steps minus one: at least 2 steps of it.
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg["lr"], total_steps=total, pct_start=max(self.warmup_fraction, 2 / total)
            )
        elif self.schedule == "onecycle":  # a run of 1-3 steps (smoke tests) has no room for the cycle
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        else:
            warmup = int(self.warmup_fraction * total)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: cosine_with_warmup(step, warmup, total)
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
