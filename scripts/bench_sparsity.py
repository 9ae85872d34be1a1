"""Training-step cost of the sparsity mechanisms, as ratios measured in one process.

For each model (ViT small32 and MobileNetV2 0.5 at 32x32, batch 64, SGD with momentum) it times a
training step (forward, backward, optimizer step) for:

- dense: no sparsity;
- static mask: sparse_lab's in-place multiply after the optimizer step (random, 90%, ERK);
- prune hooks: the same masks through ``torch.nn.utils.prune`` (forward pre-hooks, W_orig * mask);
- SR-STE 2:4 / STE 2:4: the ``nm24`` method (mask recomputed every forward, dense weights trained);
- RigL update: one drop/grow update (80% ERK, alpha 0.3) in units of a dense step, amortized over ΔT = 100.

Variants are interleaved round by round and each reports its median step, so load from other
processes hits all of them alike. ``--write`` puts the table into docs/benchmarks.md under
"## Sparsity methods" (replacing that section only).

    .venv/bin/python scripts/bench_sparsity.py [--rounds 5] [--steps 4] [--write]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from sparse_lab.models import build_model
from sparse_lab.sparsity import build_method

ROOT = Path(__file__).resolve().parents[1]
BATCH, IMAGE, CLASSES = 64, 32, 10


def make_model(name: str) -> torch.nn.Module:
    kwargs = {"width_mult": 0.5} if name == "mobilenet_v2" else {}
    return build_model(name, modality="image", num_classes=CLASSES, image_size=IMAGE, in_chans=3, **kwargs)


class Variant:
    def __init__(self, label: str, model: torch.nn.Module, after_step=None):
        self.label, self.model, self.after_step = label, model, after_step
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.times: list[float] = []

    def step(self, x, y) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()
        if self.after_step:
            self.after_step()
        return time.perf_counter() - start


def bench_model(name: str, rounds: int, steps: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    base = make_model(name)
    x, y = torch.randn(BATCH, 3, IMAGE, IMAGE), torch.randint(0, CLASSES, (BATCH,))

    dense = Variant("dense", copy.deepcopy(base))

    static_model = copy.deepcopy(base)
    static = build_method("random", sparsity=0.9, distribution="erk")
    static.attach(static_model, seed=seed)
    masked = Variant("static mask", static_model, after_step=static.apply_masks)

    hooks_model = copy.deepcopy(base)
    modules = dict(hooks_model.named_modules())
    for pname, mask in static.masks.items():
        prune.custom_from_mask(modules[pname.rsplit(".", 1)[0]], "weight", mask)
    hooks = Variant("prune hooks", hooks_model)

    variants = [dense, masked, hooks]
    nm_methods = {}
    for label, sr_ste in (("SR-STE 2:4", True), ("STE 2:4", False)):
        nm_model = copy.deepcopy(base)
        nm = build_method("nm", n=2, m=4, sr_ste=sr_ste)
        nm.attach(nm_model)
        nm.install()
        nm_methods[label] = nm
        variants.append(Variant(label, nm_model))

    for v in variants:  # warm-up
        for _ in range(2):
            v.step(x, y)
    for _ in range(rounds):
        for v in variants:
            v.times.extend(v.step(x, y) for _ in range(steps))
    medians = {v.label: statistics.median(v.times) for v in variants}

    # RigL: one update with real gradients present, timed against the dense step of this run.
    rigl_model = copy.deepcopy(base)
    rigl = build_method("rigl", sparsity=0.8, distribution="erk", delta_t=100, alpha=0.3)
    rigl.attach(rigl_model, seed=seed)
    rigl_variant = Variant("rigl", rigl_model, after_step=rigl.apply_masks)
    rigl_variant.step(x, y)
    update_times = []
    for _ in range(rounds):
        rigl_variant.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(rigl_model(x), y).backward()
        start = time.perf_counter()
        rigl.update_masks(step=1, optimizers=[rigl_variant.optimizer])
        update_times.append(time.perf_counter() - start)
    for nm in nm_methods.values():
        nm.remove()
    return {
        "medians": medians,
        "rigl_update": statistics.median(update_times),
        "params": sum(p.numel() for p in base.parameters()),
    }


def table(results: dict) -> str:
    lines = [
        "| model | dense step (ms) | static mask / dense | prune hooks / dense | static mask / prune hooks "
        "| SR-STE 2:4 / dense | STE 2:4 / dense | RigL update (dense steps) | RigL amortized, ΔT=100 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        m = r["medians"]
        d = m["dense"]
        lines.append(
            f"| {name} ({r['params'] / 1e6:.2f} M params) | {d * 1e3:.0f} | {m['static mask'] / d:.3f}x "
            f"| {m['prune hooks'] / d:.3f}x | {m['static mask'] / m['prune hooks']:.3f}x "
            f"| {m['SR-STE 2:4'] / d:.3f}x | {m['STE 2:4'] / d:.3f}x | {r['rigl_update'] / d:.2f} "
            f"| +{r['rigl_update'] / d:.2f}% |"
        )
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    section = "## Sparsity methods\n\n" + text.strip() + "\n"
    pattern = re.compile(r"## Sparsity methods\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: section.rstrip("\n"), existing)
    else:
        updated = existing.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(exist_ok=True)
    path.write_text(updated if updated.endswith("\n") else updated + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit", "mobilenet_v2"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    results = {name: bench_model(name, args.rounds, args.steps) for name in args.models}
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fp32, batch {BATCH}, {IMAGE}x{IMAGE}, SGD momentum"
    )
    text = (
        "Measured by `scripts/bench_sparsity.py` (median training step of each variant, variants interleaved "
        f"in {args.rounds} rounds of {args.steps} steps, one process). Machine: {machine}.\n"
        "Static mask and prune hooks: 90% random ERK masks; RigL: 80% ERK, α = 0.3, one per-layer update "
        "with gradients present. Goals: static mask ≤ 1.05x dense, SR-STE ≤ 1.3x dense, "
        "RigL amortized over ΔT = 100 ≤ 2%.\n\n" + table(results) + "\n"
    )
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
