"""Measured latency of a model's forward pass on the machine the run uses."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.no_grad()
def measure_latency_ms(model: nn.Module, example_input, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall-clock milliseconds of one forward pass at batch size 1, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(example_input)
        times = []
        for _ in range(repeats):
            _sync(example_input)
            start = time.perf_counter()
            model(example_input)
            _sync(example_input)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
    return statistics.median(times)


def _sync(example_input) -> None:
    # Inputs may be tensors, dicts or sparse-tensor tuples: wait for the GPU whenever one is in use.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
