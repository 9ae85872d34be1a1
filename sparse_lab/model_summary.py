"""Lightning's model summary at the start of fit, without its FLOPs column and "Total FLOPs" line.

Lightning counts FLOPs with torch's FlopCounterMode only when the LightningModule sets
``example_input_array`` (otherwise it prints "Total FLOPs: 0"), and even then it misses sparse
convolutions and fused attention and counts the weights a sparsity method zeroes. The run counts MACs
itself (``sparse_lab.measure``: dense, effective and on the target, per layer) and reports them at the
end of the run and in results.json, so this summary leaves FLOPs out rather than show a wrong number.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.utilities.model_summary.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)

FLOPS_COLUMN = "FLOPs"


class ModelSummaryWithoutFlops(RichModelSummary):
    """``RichModelSummary`` (what Lightning uses by default with rich installed) minus the FLOPs figures."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != FLOPS_COLUMN]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            numeric = name.startswith("Params") or name.endswith("sizes")
            table.add_column(
                name,
                justify="right" if numeric else "left",
                style="dim" if name == " " else None,
                no_wrap=name == "Name",
            )
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)

        grid = Table.grid(expand=True)
        grid.add_column()
        for label, value in (
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", total_training_modes["train"]),
            ("Modules in eval mode", total_training_modes["eval"]),
        ):
            grid.add_row(f"[bold]{label}[/]: {value}")

        console = get_console()
        console.print(table)
        console.print(grid)
