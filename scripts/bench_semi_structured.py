"""2:4 masks from `sparsity=nm24` on CUDA's semi-structured sparse kernels (needs an NVIDIA GPU, sm80+).

For the linear layers of a ViT-B/16 block (qkv 768→2304, MLP 768→3072 and 3072→768), take a random
weight, apply sparse_lab's 2:4 mask (groups of 4 along the input dimension, as SR-STE trains them),
convert it to each of torch's semi-structured formats (CUTLASS; cuSPARSELt where built) and check that the
sparse kernel gives the masked dense layer's output; then time both (fp16, 64 images x 197 tokens). Prints one
line per layer and the ratio dense / 2:4; `docs/benchmarks.md` holds a measured table.

    python scripts/bench_semi_structured.py
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from sparse_lab.sparsity.nm import nm_mask

# ViT-B/16's block linears, and one large layer for where the sparse kernels are meant to win.
LAYERS = {"qkv": (768, 2304), "mlp.fc1": (768, 3072), "mlp.fc2": (3072, 768), "4096sq": (4096, 4096)}
TOKENS = 64 * 197


def time_ms(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> int:
    if not torch.cuda.is_available():
        # `make bench` runs every benchmark; on a CPU-only machine this one has nothing to measure.
        print("bench_semi_structured: skipped, no CUDA GPU (2:4 semi-structured kernels are CUDA-only)")
        return 0
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    backends = {"cutlass": SparseSemiStructuredTensorCUTLASS}
    if torch.backends.cusparselt.is_available():
        backends["cusparselt"] = SparseSemiStructuredTensorCUSPARSELT
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, fp16, {TOKENS} tokens")
    print(
        f"{'layer':<8} {'shape':>11} {'backend':>10} {'dense ms':>9} {'2:4 ms':>8} {'dense/2:4':>10} {'rel. diff':>10}"
    )
    for name, (fan_in, fan_out) in LAYERS.items():
        weight = torch.randn(fan_out, fan_in, device="cuda")
        mask = nm_mask(weight, n=2, m=4)
        assert int(mask.view(fan_out, -1, 4).sum(-1).max()) <= 2, "mask is not 2:4"
        dense = (weight * mask).half()
        x = torch.randn(TOKENS, fan_in, device="cuda", dtype=torch.half)
        reference = F.linear(x, dense)
        dense_ms = time_ms(lambda x=x, dense=dense: F.linear(x, dense))
        for backend, cls in backends.items():
            try:
                sparse = cls.from_dense(dense)
                diff = (F.linear(x, sparse) - reference).abs().max().item() / reference.abs().max().item()
            except RuntimeError as exc:  # e.g. torch's CUTLASS 2:4 kernels are built for sm8x only
                print(
                    f"{name:<8} {fan_in:>5}x{fan_out:<5} {backend:>10} not supported here: {str(exc).splitlines()[0]}"
                )
                continue
            sparse_ms = time_ms(lambda x=x, sparse=sparse: F.linear(x, sparse))
            print(
                f"{name:<8} {fan_in:>5}x{fan_out:<5} {backend:>10} {dense_ms:>9.3f} {sparse_ms:>8.3f} "
                f"{dense_ms / sparse_ms:>9.2f}x {diff:>10.1e}"
            )
            if diff > 1e-2:
                print(
                    f"error: {name}: the 2:4 kernel disagrees with the masked dense layer ({diff:.1e})", file=sys.stderr
                )
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
