"""Per-layer density of the final models: one matrix per model, rows = its layers, columns = its groups.

Different models have different layers, so each model gets its own matrix (and heatmap): the rows are
the model's prunable layers in network order, the columns the groups of that model (sparsity method,
and whatever else differs: sparsity level, data, hardware), each cell the layer's density (fraction of
nonzero weights, results.json ``layers``) averaged over the group's seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparse_lab.report.runs import Group


@dataclass
class DensityMatrix:
    model: str
    layers: list[str]  # rows, in network order
    groups: list[Group]  # one per column
    columns: list[str]  # short column labels: the sparsity method, plus what else differs between columns
    values: list[list[float | None]]  # values[row][column]: mean density over seeds; None where a group lacks the layer
    filename: str = ""  # density_<model>.png

    @property
    def sparsity(self) -> list[float | None]:
        """Each column's achieved global sparsity (mean over seeds), for the column labels."""
        return [g.mean_metric("sparsity/global") for g in self.groups]


def layer_densities(group: Group) -> dict[str, float]:
    """Layer name -> density averaged over the group's runs that recorded the layer (in network order)."""
    sums: dict[str, list[float]] = {}
    for run in group.runs:
        for row in run.layers:
            density = row.get("density")
            if density is None and row.get("numel"):
                density = (row.get("nonzero") or 0) / row["numel"]
            if density is not None:
                sums.setdefault(str(row["name"]), []).append(float(density))
    return {name: sum(v) / len(v) for name, v in sums.items()}


def density_matrices(groups: list[Group]) -> list[DensityMatrix]:
    """One matrix per model (sorted by name) among the groups whose runs recorded per-layer densities."""
    by_model: dict[str, list[tuple[Group, dict[str, float]]]] = {}
    for g in groups:
        densities = layer_densities(g)
        if densities:
            by_model.setdefault(g.first.name("model"), []).append((g, densities))
    matrices: list[DensityMatrix] = []
    used: set[str] = set()
    for model in sorted(by_model):
        columns = by_model[model]
        layers: list[str] = []
        for _, densities in columns:
            layers += [name for name in densities if name not in layers]
        mine = [g for g, _ in columns]
        values = [[densities.get(layer) for _, densities in columns] for layer in layers]
        filename = _unique(f"density_{_slug(model)}", used) + ".png"
        matrices.append(DensityMatrix(model, layers, mine, column_labels(mine), values, filename))
    return matrices


def column_labels(groups: list[Group]) -> list[str]:
    """The sparsity method, the data and hardware where they differ between the columns, and the part of
    the group label that tells apart groups with the same components (``(sparsity.sparsity=0.5)``)."""
    varying = [c for c in ("data", "hardware") if len({g.first.name(c) for g in groups}) > 1]
    labels = []
    for g in groups:
        base = "/".join(g.first.name(c) for c in ("data", "model", "sparsity", "hardware"))
        suffix = g.label[len(base) :].strip() if g.label.startswith(base) else ""
        parts = [g.first.name("sparsity"), *(g.first.name(c) for c in varying)]
        labels.append("/".join(parts) + (f" {suffix}" if suffix else ""))
    return labels


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "model"


def _unique(stem: str, used: set[str]) -> str:
    name, i = stem, 2
    while name in used:
        name, i = f"{stem}_{i}", i + 1
    used.add(name)
    return name
