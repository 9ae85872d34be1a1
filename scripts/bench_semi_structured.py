"""2:4 masks from `sparsity=nm24` on CUDA's semi-structured sparse kernels (needs an NVIDIA GPU, sm80+).

For the linear layers of a ViT-B/16 block (qkv 768→2304, MLP 768→3072 and 3072→768), take a random
weight, apply sparse_lab's 2:4 mask (groups of 4 along the input dimension, as SR-STE trains them),
convert it to each of torch's semi-structured formats (CUTLASS; cuSPARSELt where built) and check that the
sparse kernel gives the masked dense layer's output; then time both (fp16, 64 images x 197 tokens). Prints one
line per layer and the ratio dense / 2:4; ``--markdown PATH`` writes the section (`make bench` puts it into
docs/benchmarks.md and keeps a copy in docs/benchmarks/semi_structured.md for machines without a GPU).

    python scripts/bench_semi_structured.py [--repeats 50] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from sparse_lab.sparsity.nm import nm_mask

# ViT-B/16's block linears, and one large layer for where the sparse kernels are meant to win.
LAYERS = {"qkv": (768, 2304), "mlp.fc1": (768, 3072), "mlp.fc2": (3072, 768), "4096sq": (4096, 4096)}
TOKENS = 64 * 197


def time_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


SECTION = "## CUDA: 2:4 semi-structured kernels (`scripts/bench_semi_structured.py`)"
WHY = (
    "Where 2:4 is slower than dense: with the torch build measured, a semi-structured call costs about the "
    "same whatever the shape, which points to a fixed per-call cost (format conversion or plan set-up in "
    "cuSPARSELt) rather than arithmetic; torch's CUTLASS 2:4 kernels are built for compute capability 8.x only. "
    "`hardware=cuda` therefore counts 2:4 layers at their dense cost, and the deployed model "
    "(`sparse_lab/hardware/deploy.py`) keeps 2:4 only where it is measured faster."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 timed calls")
    parser.add_argument("--markdown", type=Path, help="write the section (heading, command, table, goal) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 5
    if not torch.cuda.is_available():
        # `make bench` runs every benchmark; on a CPU-only machine this one has nothing to measure and writes
        # no section (scripts/bench.py then uses the stored one, docs/benchmarks/semi_structured.md).
        print("bench_semi_structured: skipped, no CUDA GPU (2:4 semi-structured kernels are CUDA-only)")
        return 0
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    backends = {"cutlass": SparseSemiStructuredTensorCUTLASS}
    if torch.backends.cusparselt.is_available():
        backends["cusparselt"] = SparseSemiStructuredTensorCUSPARSELT
    torch.manual_seed(0)
    device = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fp16, {TOKENS} tokens"
    print(f"device: {device}")
    rows, goal_rows, unsupported, missed = [], [], [], False
    for name, (fan_in, fan_out) in LAYERS.items():
        weight = torch.randn(fan_out, fan_in, device="cuda")
        mask = nm_mask(weight, n=2, m=4)
        assert int(mask.view(fan_out, -1, 4).sum(-1).max()) <= 2, "mask is not 2:4"
        dense = (weight * mask).half()
        x = torch.randn(TOKENS, fan_in, device="cuda", dtype=torch.half)
        reference = F.linear(x, dense)
        dense_ms = time_ms(lambda x=x, dense=dense: F.linear(x, dense), args.repeats)
        for backend, cls in backends.items():
            try:
                sparse = cls.from_dense(dense)
                diff = (F.linear(x, sparse) - reference).abs().max().item() / reference.abs().max().item()
            except RuntimeError as exc:  # e.g. torch's CUTLASS 2:4 kernels are built for sm8x only
                unsupported.append(f"{name} {backend}: {str(exc).splitlines()[0]}")
                print(f"{name:<8} {fan_in:>5}x{fan_out:<5} {backend:>10} not supported here: {unsupported[-1]}")
                continue
            sparse_ms = time_ms(lambda x=x, sparse=sparse: F.linear(x, sparse), args.repeats)
            print(
                f"{name:<8} {fan_in:>5}x{fan_out:<5} {backend:>10} {dense_ms:>9.3f} {sparse_ms:>8.3f} "
                f"{dense_ms / sparse_ms:>9.2f}x {diff:>10.1e}"
            )
            if diff > 1e-2:
                print(
                    f"error: {name}: the 2:4 kernel disagrees with the masked dense layer ({diff:.1e})", file=sys.stderr
                )
                return 1
            rows.append(
                f"| {name} | {fan_in} x {fan_out} | {backend} | {dense_ms:.3f} | {sparse_ms:.3f} "
                f"| {dense_ms / sparse_ms:.2f}x | {diff:.1e} |"
            )
            faster = sparse_ms < dense_ms
            missed |= not faster
            goal_rows.append(
                f"| {name}, {backend} | {dense_ms / sparse_ms:.2f}x | {'met' if faster else '**missed**'} |"
            )
    lines = [
        SECTION,
        "",
        "```",
        "python scripts/bench_semi_structured.py "
        + ("--quick" if args.quick else f"--repeats {args.repeats}")
        + " --markdown PATH",
        "```",
        "",
        f"On {device}: for ViT-B/16's block linears and one large layer, a random weight with sparse_lab's 2:4 "
        "mask (groups of 4 along the input dimension, as `nm24` trains them), `F.linear` with the masked dense "
        "weight against torch's semi-structured tensor of each backend; mean of "
        f"{args.repeats} calls after 5 warm-up calls (CUDA events). rel. max diff: the largest output difference "
        "over the largest output.",
        "",
        "| layer | in x out | backend | dense ms | 2:4 ms | dense / 2:4 | rel. max diff |",
        "|---|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        *([f"Not supported here: {'; '.join(unsupported)}.", ""] if unsupported else []),
        "**Goal**: a 2:4 layer faster than its masked dense layer.",
        "",
        "| layer, backend | dense / 2:4 | status |",
        "|---|---:|---|",
        *goal_rows,
        "",
        WHY if missed else "All goals met.",
    ]
    text = "\n".join(lines) + "\n"
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
