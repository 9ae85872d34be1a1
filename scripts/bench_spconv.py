"""E-3DSNN's sparse convolutions (spconv) vs the same network with dense Conv3d on the same voxel grid.

One training step (forward + backward, batch 8 of shapes3d clouds) of three variants, interleaved round by
round in one process: the spconv network as sparse-lab runs it (``sparse_lab.spconv_compat``: every kernel
offset of a sparse convolution in one gather, grouped matmul and CSR sum; index pairs searched once per
coordinates tensor), the same network with spconv's own CPU convolution (a Python loop over kernel
offsets) and the dense twin. Each variant's time in a round is the median of ``--steps`` steps; the
speed-up is taken within each round and reported as the median (min-max) over rounds. Every sparse step
gets a fresh coordinates tensor, as a training batch does, so pair search is paid every step.

The dense twin has the same layers and weight shapes: SubMConv3d(3x3x3) -> Conv3d(3, padding 1),
SparseConv3d(2, stride 2) -> Conv3d(2, stride 2), BatchNorm1d -> BatchNorm3d, the same integer spiking
neurons, mean pooling over the occupied cells of the last grid. A profile of the sparse step (where its
time goes) follows the table. Run on a quiet machine, with one thread on a shared one:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_spconv.py [--rounds 10] [--markdown PATH] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import spconv
import torch
import torch.nn.functional as F
from torch import nn

from sparse_lab import spconv_compat
from sparse_lab.data.points import voxelize
from sparse_lab.data.shapes3d import Shapes3DDataModule
from sparse_lab.measure import count_macs
from sparse_lab.models import build_model
from sparse_lab.models.e3dsnn import PRESETS, IntegerLIF

HEADING = "## Sparse vs dense 3D convolution: E-3DSNN"
GOAL = 5.0  # dense step / sparse step at the default grid
DEFAULT_VOXEL = 0.125  # shapes3d's default: a 16^3 grid
VARIANTS = ("sparse", "spconv_loop", "dense")


class DenseUnit(nn.Module):
    def __init__(self, cin, cout, kind, levels, spike_in=True):
        super().__init__()
        self.spike = IntegerLIF(levels) if spike_in else None
        self.conv = (
            nn.Conv3d(cin, cout, 3, padding=1, bias=False) if kind == "subm" else nn.Conv3d(cin, cout, 2, 2, bias=False)
        )
        self.bn = nn.BatchNorm3d(cout, eps=1e-3)

    def forward(self, x):
        return self.bn(self.conv(self.spike(x) if self.spike is not None else x))


class DenseBlock(nn.Module):
    def __init__(self, c, levels):
        super().__init__()
        self.unit1, self.unit2, self.unit3 = (DenseUnit(c, c, "subm", levels) for _ in range(3))

    def forward(self, x):
        x = x + self.unit1(x)
        return x + self.unit3(self.unit2(x))


class DenseE3DSNN(nn.Module):
    def __init__(self, num_classes, in_chans, embed_dim, channels, depths, levels=4):
        super().__init__()
        e = embed_dim
        self.stem = nn.Sequential(
            DenseUnit(in_chans, e, "subm", levels, spike_in=False),
            DenseUnit(e, e, "subm", levels),
            DenseUnit(e, e, "subm", levels),
        )
        stages, cin = [], e
        for c, d in zip(channels, depths):
            stages.append(nn.Sequential(DenseUnit(cin, c, "down", levels), *[DenseBlock(c, levels) for _ in range(d)]))
            cin = c
        self.stages = nn.Sequential(*stages)
        self.head_spike = IntegerLIF(levels)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, grid):
        occupied = (grid.abs().sum(1, keepdim=True) > 0).float()
        x = self.stages(self.stem(grid))
        for _ in self.stages:  # occupancy of the last grid: any occupied input cell below it
            occupied = F.max_pool3d(occupied, 2)
        s = self.head_spike(x) * occupied
        return self.head(s.sum((2, 3, 4)) / occupied.sum((2, 3, 4)).clamp_min(1))


def densify(batch):
    g = batch.spatial_shape
    grid = torch.zeros(batch.batch_size, batch.features.shape[1], *g)
    b, z, y, x = batch.coords.long().unbind(1)
    grid[b, :, z, y, x] = batch.features
    return grid


@dataclasses.dataclass
class Case:
    """One row of the table: a preset on a grid, its models and inputs."""

    preset: str
    voxel_size: float
    grid: int
    params: int
    occupancy: float
    macs_sparse: float  # per sample, forward
    macs_dense: float
    models: dict
    inputs: dict
    labels: torch.Tensor
    times: dict = dataclasses.field(default_factory=lambda: {v: [] for v in VARIANTS})


def build_case(preset: str, voxel_size: float, batch: int) -> Case:
    torch.manual_seed(0)
    dm = Shapes3DDataModule(train_size=batch, val_size=1, test_size=1, voxel_size=voxel_size)
    dm.setup()
    points, labels = dm.train_set.points[:batch], dm.train_set.labels[:batch]
    sparse_in = voxelize(points, voxel_size)
    dense_in = densify(sparse_in)
    g = sparse_in.spatial_shape[0]
    sparse = build_model("e3dsnn", modality="point_cloud", num_classes=12, in_chans=4, grid_size=g, preset=preset)
    dense = DenseE3DSNN(12, 4, **PRESETS[preset])
    params = sum(p.numel() for p in sparse.parameters())
    assert params == sum(p.numel() for p in dense.parameters())  # same weights, only the convolution differs
    macs_sparse = count_macs(sparse, sparse_in).dense / batch
    macs_dense = count_macs(dense, dense_in).dense / batch
    return Case(
        preset=preset,
        voxel_size=voxel_size,
        grid=g,
        params=params,
        occupancy=len(sparse_in.coords) / (batch * g**3),
        macs_sparse=macs_sparse,
        macs_dense=macs_dense,
        models={"sparse": sparse, "spconv_loop": sparse, "dense": dense},
        inputs={"sparse": sparse_in, "spconv_loop": sparse_in, "dense": dense_in},
        labels=labels,
    )


def fresh(x):
    """A training batch as a data loader hands it over: new tensors (so no index pairs cached on them)."""
    return dataclasses.replace(x, coords=x.coords.clone()) if hasattr(x, "coords") else x


def step(model, x, labels) -> None:
    F.cross_entropy(model(fresh(x)), labels).backward()
    model.zero_grad(set_to_none=True)


def time_variant(case: Case, variant: str, steps: int) -> float:
    model, x = case.models[variant], case.inputs[variant]
    context = spconv_compat.spconv_loops() if variant == "spconv_loop" else contextlib.nullcontext()
    times = []
    with context:
        for _ in range(steps):
            start = time.perf_counter()
            step(model, x, case.labels)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_rounds(case: Case, rounds: int, steps: int) -> None:
    for variant in VARIANTS:  # warm-up: allocator, oneDNN primitives, first pair search
        time_variant(case, variant, 2)
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # ABC CBA: drift in the load cancels
        for variant in order:
            case.times[variant].append(time_variant(case, variant, steps))


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    return [n / d for n, d in zip(numerator, denominator)]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


# -- where a sparse step's time goes ------------------------------------------------------------------------
PARTS = {
    "get_indice_pairs": "pair search (spconv)",
    "indice_conv": "sparse conv forward",
    "indice_conv_backward": "sparse conv backward",
    "batchnorm": "BatchNorm1d forward",
    "neurons": "spiking neurons forward",
}


def profile(case: Case, variant: str, steps: int) -> dict[str, float]:
    """Shares of a sparse step: spconv ops and module forwards timed by wrappers (the wrappers add a few
    microseconds per call, under 1% of a step); the rest is autograd's backward of BatchNorm, neurons and
    additions, the head, and Python."""
    from spconv.pytorch import ops

    spent = collections.defaultdict(float)

    def timed(part, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start

        return wrapper

    model = case.models[variant]
    originals = {name: getattr(ops, name) for name in ("get_indice_pairs", "indice_conv", "indice_conv_backward")}
    patched = []
    for module in model.modules():
        part = (
            "batchnorm" if isinstance(module, nn.BatchNorm1d) else "neurons" if isinstance(module, IntegerLIF) else None
        )
        if part:
            module.forward = timed(part, module.forward)
            patched.append(module)
    context = spconv_compat.spconv_loops() if variant == "spconv_loop" else contextlib.nullcontext()
    try:
        for name, fn in originals.items():
            setattr(ops, name, timed(name, fn))
        with context:
            step(model, case.inputs[variant], case.labels)
            spent.clear()
            start = time.perf_counter()
            for _ in range(steps):
                step(model, case.inputs[variant], case.labels)
            total = time.perf_counter() - start
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)
        for module in patched:
            del module.forward
    shares = {part: spent[part] / total for part in PARTS}
    shares["rest"] = 1 - sum(shares.values())
    shares["step_ms"] = total / steps * 1e3
    return shares


def profile_cell(shares: dict[str, float]) -> str:
    parts = [f"{label} {shares[part]:.0%}" for part, label in PARTS.items()]
    return ", ".join(parts) + f", the rest (autograd, additions, head, Python) {shares['rest']:.0%}"


# -- the section ------------------------------------------------------------------------------------------
def command(args) -> str:
    parts = ["OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_spconv.py"]
    if args.quick:
        parts.append("--quick")
    else:
        parts += [
            f"--preset {args.preset}",
            f"--batch {args.batch}",
            f"--rounds {args.rounds}",
            f"--steps {args.steps}",
        ]
        parts.append("--voxel-sizes " + " ".join(str(v) for v in args.voxel_sizes))
    return " ".join(parts)


def table(cases: list[Case]) -> list[str]:
    rows = [
        "| preset | grid | occupancy | MACs / sample (fwd): sparse | dense | MAC ratio | step: sparse (ms) "
        "| spconv's loop (ms) | dense Conv3d (ms) | dense / sparse | dense / spconv's loop |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        t = {v: statistics.median(c.times[v]) for v in VARIANTS}
        default = " (shapes3d default)" if c.voxel_size == DEFAULT_VOXEL else ""
        rows.append(
            f"| {c.preset} ({c.params / 1e6:.2f}M) | {c.grid}³ (voxel {c.voxel_size}){default} | {c.occupancy:.2%} "
            f"| {c.macs_sparse / 1e6:.1f}M | {c.macs_dense / 1e6:.1f}M | {c.macs_dense / c.macs_sparse:.0f}x "
            f"| {t['sparse']:.1f} | {t['spconv_loop']:.1f} | {t['dense']:.1f} "
            f"| **{spread(ratios(c.times['dense'], c.times['sparse']))}** "
            f"| {spread(ratios(c.times['dense'], c.times['spconv_loop']))} |"
        )
    return rows


def section(args, cases: list[Case], shares: dict[str, dict[str, float]]) -> str:
    default = next((c for c in cases if c.voxel_size == DEFAULT_VOXEL), cases[0])
    speedup = statistics.median(ratios(default.times["dense"], default.times["sparse"]))
    gained = statistics.median(ratios(default.times["spconv_loop"], default.times["sparse"]))
    met = speedup >= GOAL
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores (load average {load:.1f} at the end), "
        f"{torch.get_num_threads()} torch thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"torch {torch.__version__}, spconv {spconv.__version__} (CPU build), fp32"
    )
    lines = [
        f"{HEADING} (`scripts/bench_spconv.py`)",
        "",
        "E-3DSNN's spconv network against the same network with dense `nn.Conv3d` on the same voxel grid "
        "(SubMConv3d 3³ → Conv3d 3³ padding 1; SparseConv3d 2³ stride 2 → Conv3d 2³ stride 2; same widths and "
        "parameter count, same integer spiking neurons). One training step (forward + backward) on a batch of "
        f"{args.batch} shapes3d clouds, three variants interleaved in {args.rounds} rounds in one process "
        "(order reversed every other round): *sparse* as sparse-lab runs spconv (`sparse_lab/spconv_compat.py`: "
        "every kernel offset of a convolution in one gather, one grouped matmul and one CSR sum; index pairs "
        "searched once per coordinates tensor), *spconv's loop* (spconv 2.3's own CPU convolution, a Python "
        f"loop over kernel offsets) and *dense Conv3d*. A variant's time in a round is the median of {args.steps} "
        "steps, after two warm-up steps; each sparse step gets a fresh coordinates tensor (pair search paid "
        "every step, as in training). Speed-ups are taken within each round: median (min-max) over rounds. "
        "MACs per sample are the forward's, counted over the batch.",
        "",
        "```",
        command(args),
        "```",
        "",
        *table(cases),
        "",
        f"Machine: {machine}. Absolute times on a shared machine are inflated by other jobs; the ratios are "
        "measured within one process.",
        "",
        f"**Goal: dense / sparse ≥ {GOAL:g}x at the default {default.grid}³ grid — "
        f"{'met' if met else 'missed'}** ({speedup:.2f}x; the batched convolution made the sparse step "
        f"{gained:.2f}x faster than spconv's own loop).",
        "",
    ]
    for variant, label in (("sparse", "sparse"), ("spconv_loop", "spconv's loop")):
        if variant in shares:
            s = shares[variant]
            lines.append(
                f"Where a {label} step goes ({default.grid}³, {s['step_ms']:.1f} ms per step while profiled): "
                f"{profile_cell(s)}."
            )
            lines.append("")
    lines += [WHY_MISSED if not met else WHY_MET, ""]
    return "\n".join(lines)


WHY_MISSED = """\
Why the goal is missed at 16³: the sparse step is bound by fixed costs per operation, not by MACs. At 5.5%
occupancy a batch of 8 clouds has 1.8k active sites; a 16-channel 3³ layer touches ~14k pairs, 4M MACs, which
takes a few hundred microseconds while every operation around it (gather, matmul, sum, BatchNorm, neuron,
residual add, spconv's Python module code, autograd) costs tens of microseconds on tiny tensors; the
later stages (253, 64 and 8 sites) are pure overhead. spconv's pair search (a hash per index key, 9 per step)
is paid every step. The dense twin pays its overheads once per layer on large tensors and runs oneDNN's
direct 3D convolution at high efficiency, so it converts its 23x more MACs into only ~2.5x more time. Ours:
spconv's per-offset Python loop is replaced by batched gathers, `bmm` and CSR sums (see the two profiles;
the convolutions themselves got ~1.3x faster, the step less because the pair tables are rebuilt for each
new batch), repeated pair searches are cached, and the model's residual blocks should pass the
`indice_key` on (`sparse_lab/models/e3dsnn.py`). Closing the rest needs fused kernels (spconv's
implicit-GEMM path is CUDA-only) or emptier grids: at 32³ the speed-up is large (second row)."""

WHY_MET = """\
The remaining gap to the MAC ratio is fixed cost per operation: at these occupancies the gather, `bmm` and
sum of a layer move a few MB each and every sparse convolution, BatchNorm and neuron pays framework overhead
in forward and backward on small tensors."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--voxel-sizes", type=float, nargs="+", default=[DEFAULT_VOXEL, 0.0625], help="0.125: 16³, 0.0625: 32³"
    )
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3, help="steps per variant and round (their median)")
    ap.add_argument("--profile-steps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="a smoke run: batch 2, 16³ only, 2 rounds of 1 step")
    ap.add_argument("--markdown", type=Path, help="write the section (heading, command, table, goal) to this file")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.voxel_sizes, args.rounds, args.steps, args.profile_steps = 2, [DEFAULT_VOXEL], 2, 1, 1
    cases = []
    for voxel_size in args.voxel_sizes:
        case = build_case(args.preset, voxel_size, args.batch)
        run_rounds(case, args.rounds, args.steps)
        cases.append(case)
        print(*table([case])[2:], sep="\n", file=sys.stderr, flush=True)
    default = next((c for c in cases if c.voxel_size == DEFAULT_VOXEL), cases[0])
    shares = {v: profile(default, v, args.profile_steps) for v in ("sparse", "spconv_loop")}
    text = section(args, cases, shares)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
