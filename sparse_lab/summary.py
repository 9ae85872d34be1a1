"""The table printed at the end of a run."""

from __future__ import annotations

import re

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
    ("energy counted as", "energy/convention", "{}"),  # macs | paper_flops (hardware.op_count)
    ("params (total / nonzero)", ("params/total", "params/nonzero"), "{:,} / {:,}"),
    ("latency dense / deployed, batch 1 (ms)", ("latency/dense_ms", "latency/deployed_ms"), "{:.2f} / {:.2f}"),
    (
        "speed-up measured / MACs, batch 1",
        ("speedup/measured", "speedup/macs", "speedup/realised"),
        "{:.2f}x / {:.2f}x ({:.0%} realised)",
    ),
    ("zero activations (mean over layers)", "activations/mean_zero_fraction", "{:.1%}"),
    ("zero deltas, temporal (mean over layers)", "activations/temporal_mean_zero_fraction", "{:.1%}"),
]


def batch_rows(metrics: dict) -> list[tuple]:
    """The latency rows at the data's batch size (its keys end in ``_b<size>``)."""
    rows = []
    for key in sorted(k for k in metrics if re.fullmatch(r"latency/dense_ms_b\d+", k)):
        suffix = key.rsplit("_", 1)[1]
        size = suffix[1:]
        rows.append(
            (f"latency dense / deployed, batch {size} (ms)", (key, f"latency/deployed_ms_{suffix}"), "{:.2f} / {:.2f}")
        )
        speedup = (f"speedup/measured_{suffix}", "speedup/macs", f"speedup/realised_{suffix}")
        rows.append((f"speed-up measured / MACs, batch {size}", speedup, "{:.2f}x / {:.2f}x ({:.0%} realised)"))
    return rows


def print_summary(cfg: DictConfig, results: dict) -> None:
    metrics = results["metrics"]
    title = " · ".join(component_name(cfg[group]) for group in ("data", "model", "sparsity", "hardware"))
    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    at = 1 + next(i for i, row in enumerate(ROWS) if row[0] == "speed-up measured / MACs, batch 1")
    for label, keys, fmt in ROWS[:at] + batch_rows(metrics) + ROWS[at:]:
        keys = keys if isinstance(keys, tuple) else (keys,)
        if all(k in metrics for k in keys):
            table.add_row(label, fmt.format(*(metrics[k] for k in keys)))
    deployed = results.get("deployed")
    if deployed:
        status = deployed["status"] + (f": {deployed['reason']}" if deployed.get("reason") else "")
        table.add_row("deployed program", status)
    console = Console()
    console.print(table)
    console.print(f"results: {results['run_dir']}/results.json", soft_wrap=True)
