"""Scene flow: L1 flow loss plus the model's auxiliary terms; EPE3D, Acc3DS, Acc3DR, Outliers.

The metrics are those of HPLFlowNet (Gu et al. 2019) and FLOT (Puy et al. 2020), over all points of
the split (every sample has the same number of points, so this equals their per-batch averaging):

- EPE3D: mean end-point error ``‖f̂ − f‖₂`` in metres;
- Acc3DS: fraction of points with EPE < 0.05 m or relative error < 5%;
- Acc3DR: fraction with EPE < 0.1 m or relative error < 10%;
- Outliers: fraction with EPE > 0.3 m or relative error > 10%;

relative error = EPE / (‖f‖ + 1e-4), the 1e-4 as in their code. The test split also reports the
zero-flow baseline's EPE3D (``test/epe3d_zero_flow`` = mean ‖f‖), the figure a model must beat.

A model takes ``{"pc1", "pc2"}`` and returns a dict with ``"flow"`` [B, N, 3]; the terms of its
``auxiliary_losses`` (``protocols.AuxiliaryLosses``) are added to the loss and logged as ``train/loss_<name>``.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import Metric

from sparse_lab.errors import UserError
from sparse_lab.tasks import TASKS
from sparse_lab.tasks.classification import (
    DEFAULT_OPTIMIZER,
    OPTIMIZERS,
    SCHEDULES,
    ClassificationTask,
    auxiliary_losses,
)

RELATIVE_EPS = 1e-4  # HPLFlowNet / FLOT: relative_err = l2 / (‖sf‖ + 1e-4)


def flow_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-point EPE and the three threshold indicators for flows [..., 3]."""
    epe = torch.linalg.vector_norm(pred - target, dim=-1)
    rel = epe / (torch.linalg.vector_norm(target, dim=-1) + RELATIVE_EPS)
    return {
        "epe3d": epe,
        "acc3d_strict": ((epe < 0.05) | (rel < 0.05)).to(epe.dtype),
        "acc3d_relax": ((epe < 0.1) | (rel < 0.1)).to(epe.dtype),
        "outliers": ((epe > 0.3) | (rel > 0.1)).to(epe.dtype),
    }


class SceneFlowMetrics(Metric):
    """EPE3D / Acc3DS / Acc3DR / Outliers accumulated over every point seen (sums and a count)."""

    full_state_update = False
    NAMES = ("epe3d", "acc3d_strict", "acc3d_relax", "outliers")

    def __init__(self):
        super().__init__()
        for name in self.NAMES:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("points", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        errors = flow_errors(pred.detach(), target)
        for name in self.NAMES:
            setattr(self, name, getattr(self, name) + errors[name].sum().double())
        self.points += errors["epe3d"].numel()

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: (getattr(self, name) / self.points.clamp(min=1)).float() for name in self.NAMES}


@TASKS.register("scene_flow")
class SceneFlowTask(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optimizer: dict | None = None,
        schedule: str = "onecycle",
        warmup_fraction: float = 0.1,
        **unused,
    ):
        super().__init__()
        unknown = set(unused) - {"label_smoothing"}  # shared optim keys that mean nothing here
        if unknown:
            raise UserError(f"scene_flow task: unknown model.optim option(s): {', '.join(sorted(unknown))}")
        self.model = model
        self.optimizer_cfg = dict(optimizer or DEFAULT_OPTIMIZER)
        name = self.optimizer_cfg.get("name", "adamw")
        if name not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        self.schedule, self.warmup_fraction = schedule, warmup_fraction
        self.metrics = nn.ModuleDict({f"{split}_flow": SceneFlowMetrics() for split in ("train", "val", "test")})
        self.zero_flow = SceneFlowMetrics()

    # Optimizer and schedule exactly as for classification (same config keys).
    configure_optimizers = ClassificationTask.configure_optimizers

    def forward(self, batch: dict) -> dict:
        return self.model({"pc1": batch["pc1"], "pc2": batch["pc2"]})

    def _step(self, batch: dict, split: str) -> torch.Tensor:
        output = self(batch)
        pred, target = output["flow"], batch["flow"]
        flow_loss = (pred - target).abs().sum(-1).mean()  # L1 per point, mean over points
        aux = auxiliary_losses(self.model, output, target, self.current_epoch)
        loss = flow_loss + sum(aux.values())
        train, b = split == "train", len(target)
        self.log(
            f"{split}/loss", loss, on_step=train, on_epoch=not train, prog_bar=train, batch_size=b, sync_dist=not train
        )
        if train:
            self.log("train/loss_flow", flow_loss, on_step=True, on_epoch=False, batch_size=b)
            for name, value in aux.items():
                self.log(f"train/loss_{name}", value, on_step=True, on_epoch=False, batch_size=b)
        self.metrics[f"{split}_flow"].update(pred, target)
        if split == "test":
            self.zero_flow.update(torch.zeros_like(target), target)
        return loss

    def _log_metrics(self, split: str) -> None:
        for name, value in self.metrics[f"{split}_flow"].compute().items():
            self.log(f"{split}/{name}", value, prog_bar=split == "val" and name == "epe3d")
        if split == "test":
            self.log("test/epe3d_zero_flow", self.zero_flow.compute()["epe3d"])
            self.zero_flow.reset()
        self.metrics[f"{split}_flow"].reset()

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
