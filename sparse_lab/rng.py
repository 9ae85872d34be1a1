"""The process-wide random number generators, captured and restored as plain data.

Lightning restores weights, optimizer, scheduler, loops and callbacks from a checkpoint, but not the
global generators that the DataLoader's shuffle order and dropout draw from: an exact resume needs
them too. The state is kept as tensors, numbers and lists, so a checkpoint holding it still loads with
``torch.load(..., weights_only=True)`` (numpy's own state object would not).
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    """torch (CPU, and every CUDA device when present), numpy and Python ``random`` states."""
    numpy_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def restore(state: dict) -> None:
    """Put back what :func:`capture` returned (CUDA states only where the devices exist)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss"]))
