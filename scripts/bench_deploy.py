"""Measured speed of deployed models against the dense model they came from, as ratios in one process.

(a) Channel pruning: MobileNetV2 (width 1.0, 224x224, 1000 classes) narrowed by MaskSparsity's own
    selection and surgery to about half its MACs (random γ, seeded), at batch 1 and batch 8. The realised
    fraction of the MAC cut is (dense ms / narrowed ms) / (dense MACs / narrowed MACs); goal >= 0.8.
    Timed eager (the narrowed nn.Module) and as the deployed torch.export program.
(b) Unstructured sparsity on the CPU: ViT small32 and MobileNetV2 0.5 (32x32, 10 classes) with random
    masks at 80 / 90 / 95% on every prunable weight (first layer and classifier dense, as the methods
    do), at batch 1 and 64. Reported: the deployed program's speed-up over dense (CSR layers cannot be
    exported with torch 2.14, so it is dense: about 1.0x), and what CSR kernels chosen per layer by
    measurement would give in eager PyTorch.

Variants are interleaved round by round (one ``torch.utils.benchmark`` median per variant and round); a
ratio is taken within each round, and the table gives the median over rounds and its min-max spread.
``--markdown PATH`` writes the section (heading, command, tables, goal) to PATH; `make bench` puts it into
docs/benchmarks.md.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_deploy.py [--rounds 7] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lab.hardware.deploy import choose_kernels, export_program, inference_copy, with_kernels
from sparse_lab.measure.latency import compare_ms
from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method

SECTION = "## Deployed models (`scripts/bench_deploy.py`)"
REALISED_GOAL = 0.8


NOTES = """\
What `torch.export` accepts (torch 2.14, CPU): a module with a CSR weight traces with static shapes
(`aten._sparse_mm`), but `torch.export.save` refuses it (`Sparse CSR tensors do not have is_contiguous`);
with a dynamic batch dimension tracing fails (no fake-tensor kernel for a sparse `aten.mm` / `addmm`), and a
CSR tensor built inside `forward` from index and value buffers fails too (no `as_strided` for sparse CSR).
So a deployed program keeps dense layers, and each run records that reason per layer in results.json
(`deployed.kernels`) without timing kernels it could not ship. A CSR product written with aten ops only
(gather, multiply, `index_add`) does export, but measured 4-45x slower than dense, so it is not offered.
A loaded program called from Python (`torch.export.load(path).module()`) dispatches every aten op from
Python: on the small models at batch 1 it is slower than the eager module (the `.pt2` columns); at larger
batches the two match. spconv models (e3dsnn, sctn) are not exported: spconv's kernels are not aten
operators (`Cannot access data pointer of Tensor (e.g. FakeTensor ...)`); runs record the reason.
"""


def ratio_cell(numerator: list[float], denominator: list[float]) -> tuple[float, str]:
    """Per-round ratios: (median, 'median (min-max)')."""
    ratios = [n / d for n, d in zip(numerator, denominator)]
    return statistics.median(ratios), spread(ratios)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def program(model: nn.Module, example: torch.Tensor) -> nn.Module:
    return export_program(model, example, io.BytesIO())


# -- (a) channel pruning ------------------------------------------------------------------------------
def narrowed_mobilenet(seed: int = 0, **masksparsity) -> tuple[nn.Module, nn.Module, float, float]:
    """(dense, narrowed, dense MACs, narrowed MACs): MobileNetV2 1.0 at 224², half its MACs removed."""
    pl.seed_everything(seed, verbose=False)
    dense = build_model("mobilenet_v2", modality="image", num_classes=1000, image_size=224, in_chans=3, width_mult=1.0)
    x = torch.zeros(1, 3, 224, 224)
    method = build_method("masksparsity", ratio=0.5, target="flops", **masksparsity)
    method.attach(dense, example_input=x)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # γ as after training: random magnitudes decide which channels go
        for group in method.groups:
            group.scale.copy_(torch.rand(group.size, generator=generator) + 0.05)
    method.select(dense, x)
    narrow = method.prune(dense)
    return inference_copy(dense)[0], inference_copy(narrow)[0], method.stats["macs_before"], method.stats["macs_after"]


def bench_channels(rounds: int, min_run_time: float, realised_eager: dict) -> list[str]:
    """Rows per batch size and MaskSparsity ``round_to`` (1: the paper's selection; 8: SIMD-friendly counts);
    fills ``realised_eager[(batch, round_to)]`` with the median realised fraction, eager."""
    x1 = torch.randn(1, 3, 224, 224)
    narrowed = {1: narrowed_mobilenet(), 8: narrowed_mobilenet(round_to=8)}
    dense, macs_dense = narrowed[1][0], narrowed[1][2]
    models = {"dense": dense, "dense_pt2": program(dense, x1)}
    for r, (_, narrow, _, _) in narrowed.items():
        models |= {f"narrow{r}": narrow, f"narrow{r}_pt2": program(narrow, x1)}
    rows = []
    for batch in (1, 8):
        times = compare_ms(models, {"x": torch.randn(batch, 3, 224, 224)}, rounds=rounds, min_run_time=min_run_time)
        t = {name: times[name, "x"] for name in models}
        for r, (_, _, _, macs_narrow) in narrowed.items():
            mac_ratio = macs_dense / macs_narrow
            realised_rounds = [d / n / mac_ratio for d, n in zip(t["dense"], t[f"narrow{r}"])]
            realised_eager[batch, r] = statistics.median(realised_rounds)
            realised = spread(realised_rounds)
            realised_pt2 = spread([d / n / mac_ratio for d, n in zip(t["dense_pt2"], t[f"narrow{r}_pt2"])])
            rows.append(
                f"| {batch} | {r} | {macs_dense / 1e6:.0f}M / {macs_narrow / 1e6:.1f}M ({mac_ratio:.2f}x) "
                f"| {statistics.median(t['dense']):.1f} | {statistics.median(t[f'narrow{r}']):.1f} "
                f"| {ratio_cell(t['dense'], t[f'narrow{r}'])[1]} | **{realised}** "
                f"| {ratio_cell(t['dense_pt2'], t[f'narrow{r}_pt2'])[1]} | {realised_pt2} |"
            )
    return rows


# -- (b) unstructured sparsity ------------------------------------------------------------------------
def masked(name: str, sparsity: float, seed: int = 0) -> nn.Module:
    pl.seed_everything(seed, verbose=False)
    kwargs = {"width_mult": 0.5} if name == "mobilenet_v2" else {"preset": "small32"}
    model = build_model(name, modality="image", num_classes=10, image_size=32, in_chans=3, **kwargs)
    if sparsity > 0:
        method = build_method("random", sparsity=sparsity, distribution="uniform")
        method.attach(model, seed=seed)  # exact-count random masks, applied in place
    return inference_copy(model)[0]


def bench_unstructured(rounds: int, min_run_time: float) -> list[str]:
    rows = []
    for name in ("vit", "mobilenet_v2"):
        for sparsity in (0.8, 0.9, 0.95):
            model = masked(name, sparsity)
            x1, x64 = torch.randn(1, 3, 32, 32), torch.randn(64, 3, 32, 32)
            choices = choose_kernels(model, [x1, x64], torch.device("cpu"))  # the default, measured choice
            chosen = [n for n, r in choices.items() if r["kernel"] != "dense"]
            models = {
                "dense": masked(name, 0.0),
                "pt2": program(model, x1),
                "csr_eager": with_kernels(model, choices, "cpu"),
            }
            times = compare_ms(models, {"b1": x1, "b64": x64}, rounds=rounds, min_run_time=min_run_time)
            cells = []
            for batch in ("b1", "b64"):
                cells += [
                    ratio_cell(times["dense", batch], times[variant, batch])[1] for variant in ("pt2", "csr_eager")
                ]
            rows.append(
                f"| {name} | {sparsity:.0%} | {len(chosen)} of {len(choices)} | "
                f"{statistics.median(times['dense', 'b1']):.2f} | {cells[0]} | {cells[1]} "
                f"| {statistics.median(times['dense', 'b64']):.1f} | {cells[2]} | {cells[3]} |"
            )
    return rows


def report(args) -> str:
    threads = torch.get_num_threads()
    realised: dict = {}
    channel_rows = bench_channels(args.rounds, args.min_run_time, realised)
    unstructured_rows = bench_unstructured(args.rounds, args.min_run_time)
    goal_rows = [
        f"| realised eager >= {REALISED_GOAL} | batch {batch}, round_to {r} | {value:.2f} "
        f"| {'met' if value >= REALISED_GOAL else '**missed**'} |"
        for (batch, r), value in realised.items()
    ]
    missed = [key for key, value in realised.items() if value < REALISED_GOAL]
    command = "OMP_NUM_THREADS={} .venv/bin/python scripts/bench_deploy.py {}".format(
        os.environ.get("OMP_NUM_THREADS", threads),
        "--quick" if args.quick else f"--rounds {args.rounds} --min-run-time {args.min_run_time}",
    )
    lines = [
        SECTION,
        "",
        "```",
        command + " --markdown PATH",
        "```",
        "",
        "Variants interleaved in one process, "
        f"{args.rounds} rounds, `torch.utils.benchmark` median per variant and round, {args.min_run_time} s each; "
        "ratio per round, median (min-max) over rounds. "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {threads} thread(s), fp32.",
        "",
        "**(a) Channel pruning.** MobileNetV2 1.0, 224², narrowed by MaskSparsity (random γ, ratio 0.5 of the MACs; "
        "`round_to`: kept channels per group rounded to a multiple of it, `sparsity.round_to`). "
        f"Realised = (dense ms / narrowed ms) / MAC ratio; goal >= {REALISED_GOAL}.",
        "",
        "| batch | round_to | MACs dense / narrowed | dense ms | narrowed ms | speed-up eager | realised eager "
        "| speed-up .pt2 | realised .pt2 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        *channel_rows,
        "",
        "**(b) Unstructured sparsity, CPU.** Random masks (uniform), first layer and classifier dense. Speed-up = "
        "dense ms / variant ms. `.pt2`: the deployed program (CSR cannot be exported: dense layers). "
        "CSR eager: `torch.sparse` CSR in the layers where `choose_kernels` measured it faster (nn.Linear only).",
        "",
        "| model | sparsity | CSR layers chosen | dense ms, b1 | .pt2, b1 | CSR eager, b1 | dense ms, b64 "
        "| .pt2, b64 | CSR eager, b64 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        *unstructured_rows,
        "",
        "**Goals** (channel pruning, median realised fraction of the MAC cut, eager):",
        "",
        "| goal | case | median | status |",
        "|---|---|---:|---|",
        *goal_rows,
        "",
        "All goals met."
        if not missed
        else "Where the goal is missed: at batch 1 a narrowed MobileNetV2 is bound by per-layer overhead (about 50 "
        "small convolutions, each with a fixed dispatch cost that narrowing does not reduce), and channel counts that "
        "are not multiples of the SIMD width waste vector lanes (`round_to` 8 recovers part of that).",
        "",
        NOTES.rstrip("\n"),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 0.02 s")
    parser.add_argument("--markdown", type=Path, help="write the section (heading, command, tables, goal) here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.min_run_time = 2, 0.02
    text = report(args)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
