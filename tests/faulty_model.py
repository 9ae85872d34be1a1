"""A small plug-in CNN (configured with ``_target_: tests.faulty_model.FaultyCNN``) that can fail on cue:
its output turns NaN at a chosen training step, or it sends its own process a signal (SIGINT,
SIGTERM, SIGKILL) at a chosen training step -- so interruption and divergence tests need no timing
and patch nothing in sparse-lab. Its BatchNorm channels let MaskSparsity trace it, dropout draws from
the global RNG (what an exact resume must restore), and it trains on digits in a fraction of a second.
"""

from __future__ import annotations

import os
import signal as signals
from pathlib import Path

import torch.nn.functional as F
from torch import nn


class FaultyCNN(nn.Module):
    input_modality = "image"

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        in_chans: int,
        width: int = 8,
        dropout: float = 0.2,
        nan_at: int | None = None,
        signal_at: int | None = None,
        signal: str = "SIGTERM",
        once_file: str | None = None,
    ):
        """``nan_at`` / ``signal_at``: the 0-based count of training forward passes (= the global step of
        a one-round run) at which to fail. ``once_file``: send the signal only while this file does not
        exist (it is created then), so that the resumed run is not interrupted again."""
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.hidden = nn.Linear(2 * width, 32)
        self.classifier = nn.Linear(32, num_classes)
        self.nan_at, self.signal_at, self.signal, self.once_file = nan_at, signal_at, signal, once_file
        self.training_calls = 0

    def forward(self, x):
        out = self.classifier(F.relu(self.hidden(self.features(x))))
        if not self.training:
            return out
        call, self.training_calls = self.training_calls, self.training_calls + 1
        if call == self.nan_at:
            out = out * float("nan")
        if call == self.signal_at and not (self.once_file and Path(self.once_file).exists()):
            if self.once_file:
                Path(self.once_file).touch()
            os.kill(os.getpid(), getattr(signals, self.signal))
        return out
