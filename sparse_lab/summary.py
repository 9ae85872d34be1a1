"""The table printed at the end of a run."""

from __future__ import annotations

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from sparse_lab.registry import component_name

ROWS = [
    ("test accuracy", "test/acc", "{:.2%}"),
    ("test EPE3D, m (zero-flow baseline)", ("test/epe3d", "test/epe3d_zero_flow"), "{:.4f} ({:.4f})"),
    (
        "test Acc3DS / Acc3DR / Outliers",
        ("test/acc3d_strict", "test/acc3d_relax", "test/outliers"),
        "{:.1%} / {:.1%} / {:.1%}",
    ),
    ("test loss", "test/loss", "{:.4f}"),
    ("sparsity (global / target)", ("sparsity/global", "sparsity/target"), "{:.3f} / {:.3f}"),
    ("MACs dense", "macs/dense", "{:,}"),
    ("MACs effective (zeros skipped)", "macs/effective", "{:,}"),
    ("MACs on target", "macs/target", "{:,}"),
    ("energy estimate (uJ)", "energy/uJ", "{:.2f}"),
    ("params (total / nonzero)", ("params/total", "params/nonzero"), "{:,} / {:,}"),
    ("latency, batch 1 (ms)", "latency/ms", "{:.2f}"),
    ("zero activations (mean over layers)", "activations/mean_zero_fraction", "{:.1%}"),
    ("zero deltas, temporal (mean over layers)", "activations/temporal_mean_zero_fraction", "{:.1%}"),
]


def print_summary(cfg: DictConfig, results: dict) -> None:
    metrics = results["metrics"]
    title = " · ".join(component_name(cfg[group]) for group in ("data", "model", "sparsity", "hardware"))
    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, keys, fmt in ROWS:
        keys = keys if isinstance(keys, tuple) else (keys,)
        if all(k in metrics for k in keys):
            table.add_row(label, fmt.format(*(metrics[k] for k in keys)))
    console = Console()
    console.print(table)
    console.print(f"results: {results['run_dir']}/results.json", soft_wrap=True)
