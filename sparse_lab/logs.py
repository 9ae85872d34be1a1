"""Keep the console for what a researcher reads: progress, epoch metrics, the summary."""

from __future__ import annotations

import logging
import warnings


def quiet_third_party_logs() -> None:
    # Lightning's start-up chatter (device availability, upsell tips) and known-benign warnings.
    for name in (
        "pytorch_lightning.utilities.rank_zero",
        "lightning.pytorch.utilities.rank_zero",
        "lightning_fabric.utilities.seed",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # torch 2.14 logs a deprecation note about its own is_fx_tracing() when a library (Lightning's model
    # summary, nested tensors) asks whether it is being traced; nothing a user can act on.
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    # torch.utils.benchmark imports cpp_extension, which logs that a CPU-only machine has no CUDA runtime.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", ".*the number of training batches.*is smaller than the logging interval.*")
