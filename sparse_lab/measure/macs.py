"""Multiply-accumulates per sample, counted at the operator level on one example input.

Every aten op the forward pass runs is seen by a ``TorchDispatchMode`` (below autograd, so ``F.linear``,
``einsum``, ``matmul`` and the scaled-dot-product-attention front end arrive as the ops that compute) and
counted by its formula in ``ops.py``: convolutions (grouped, depthwise, transposed), every matmul
(mm/addmm/bmm/baddbmm/mv/dot, ``cdist``), every SDPA backend, and the fused fast paths of
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``. Each op is attributed to the innermost
module running (global forward pre/post hooks keep a stack), one row per (module, kind, weight), in order of
execution. spconv sparse convolutions are not aten ops: they are counted per module by active pairs
(``sparse_conv.py``). A module whose computation is invisible to aten (a custom kernel) may declare
``extra_macs`` (``protocols.ExtraMacs``); it is added as a row of kind ``"extra"``. Normalisation and
elementwise ops are reported as element counts in ``MacCount.other``, not as MACs.

*Effective* MACs skip multiplications by zero weights: the weight operand of an op is the one that is
(a view of) a model parameter, or a tensor the running module holds as a plain attribute (a forward
pre-hook's masked weight, as ``nn.utils.prune`` and the N:M method install); the op's dense MACs times
that operand's nonzero fraction (exact for unstructured masks: every weight is used equally often).
Products of two activations (attention) have effective = dense. FLOPs are twice MACs; we report MACs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from sparse_lab.measure.ops import COPY_OPS, FORMULAS, NORM_OPS, SOFTMAX_OPS, Term, bind
from sparse_lab.measure.sparse_conv import sparse_conv_macs
from sparse_lab.protocols import ExtraMacs
from sparse_lab.spconv_layout import is_sparse_conv


@dataclass
class LayerMacs:
    """One module's MACs of one kind (and one weight) for one sample."""

    name: str  # module name in the model ("" for the model itself)
    kind: str  # "conv" | "linear" | "matmul" | "attention" | "sparse_conv" | "extra"
    dense: int = 0
    effective: int = 0  # skipping multiplications by zero weights
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    weight: torch.Tensor | None = field(default=None, repr=False, compare=False)  # whose zeros were read
    target: int = 0  # what a hardware target executes (``count_macs(..., executed=...)``); dense by default


@dataclass
class MacCount:
    """Per-layer MACs of one sample and their totals; ``other`` holds element counts (norm, elementwise)."""

    layers: list[LayerMacs]
    other: dict[str, int]

    @property
    def dense(self) -> int:
        return sum(r.dense for r in self.layers)

    @property
    def effective(self) -> int:
        return sum(r.effective for r in self.layers)

    @property
    def target(self) -> int:
        return sum(r.target for r in self.layers)

    def by_name(self) -> dict[str, int]:
        """Dense MACs per module name (a module may have several rows: its kinds and weights)."""
        totals: dict[str, int] = {}
        for r in self.layers:
            totals[r.name] = totals.get(r.name, 0) + r.dense
        return totals

    def table(self) -> list[dict]:
        """The rows for results.json."""
        return [
            dict(name=r.name, kind=r.kind, macs_dense=r.dense, macs_effective=r.effective, macs_target=r.target)
            for r in self.layers
        ]


@torch.no_grad()
def count_macs(model: nn.Module, example_input, executed: Callable[[LayerMacs], int] | None = None) -> MacCount:
    """MACs of ``model`` on ``example_input`` (batch size 1: per sample), in eval mode without gradients
    (the mode a model is deployed in; ``nn.MultiheadAttention`` takes its fused path there).

    ``executed(row)`` gives the MACs a hardware target executes for a row (default: dense)."""
    counter = _OpCounter(model)
    was_training = model.training
    model.eval()
    handles = counter.attach()
    try:
        with counter:
            model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    rows = list(counter.rows.values())
    for row in rows:
        row.target = int(executed(row)) if executed is not None else row.dense
    return MacCount(rows, dict(counter.other))


@dataclass
class _Frame:
    name: str
    module: nn.Module
    opaque: bool  # a sparse conv (or inside one): its aten ops are its implementation, counted by pairs


class _OpCounter(TorchDispatchMode):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # Storage → parameter: an operand is a weight when it shares a parameter's storage (a view of it).
        self.params = {_storage(p): p for p in model.parameters() if _storage(p)}
        self.names = {id(m): (name, is_sparse_conv(m), isinstance(m, ExtraMacs)) for name, m in model.named_modules()}
        self.stack: list[_Frame] = []
        self.rows: dict[tuple, LayerMacs] = {}
        self.other = {"norm": 0, "elementwise": 0}
        self.nonzero_cache: dict[tuple, int] = {}
        self.paused = False  # our own hooks' tensor work is not the model's

    # -- module stack ---------------------------------------------------------------------------------
    def attach(self) -> list:
        # Global module hooks, not per-module ones: a module with hooks of its own loses its fused fast path
        # (nn.TransformerEncoderLayer checks), and the count must follow the path the model really takes.
        return [
            register_module_forward_pre_hook(self._enter),
            register_module_forward_hook(self._exit, always_call=True),
        ]

    def _enter(self, module: nn.Module, args) -> None:
        if id(module) in self.names:  # modules outside the model (built on the fly) count for their caller
            name, sparse, _ = self.names[id(module)]
            self.stack.append(_Frame(name, module, sparse or bool(self.stack and self.stack[-1].opaque)))

    def _exit(self, module: nn.Module, args, output) -> None:
        if not self.stack or self.stack[-1].module is not module:
            return  # not a module of the model
        name, sparse, extra = self.names[id(module)]
        self.stack.pop()
        self.paused = True
        try:
            if sparse:
                dense, effective = sparse_conv_macs(module, args[0], output)
                self._row(name, module, "sparse_conv", module.weight, dense, effective)
            if extra:
                macs = int(module.extra_macs(args, output))
                self._row(name, module, "extra", None, macs, macs)
        finally:
            self.paused = False

    # -- operators ------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.paused and not (self.stack and self.stack[-1].opaque):
            self._record(func, args, kwargs, out)
        return out

    def _record(self, func, args, kwargs, out) -> None:
        packet = func.overloadpacket
        if packet in FORMULAS:
            for term in FORMULAS[packet](bind(func, args, kwargs), _first_tensor(out)):
                self._add(term)
        elif packet in NORM_OPS:
            self.other["norm"] += args[0].numel()
        elif packet in SOFTMAX_OPS or (torch.Tag.pointwise in func.tags and packet not in COPY_OPS):
            first = _first_tensor(out)
            self.other["elementwise"] += first.numel() if isinstance(first, torch.Tensor) else 0

    def _add(self, term: Term) -> None:
        if term.kind in self.other:
            self.other[term.kind] += term.macs
            return
        frame = self.stack[-1] if self.stack else _Frame("", self.model, False)
        weight, operand = self._weight_operand(term.operands, frame.module)
        kind = "linear" if term.kind == "matmul" and weight is not None else term.kind
        effective = term.macs if operand is None else _scale(term.macs, self._nonzero(operand), operand.numel())
        self._row(frame.name, frame.module, kind, weight, term.macs, effective)

    def _row(self, name: str, module: nn.Module, kind: str, weight, dense: int, effective: int) -> None:
        """Add to the row of (module, kind, weight), created at its first op: rows keep execution order."""
        key = (name, kind, None if weight is None else id(weight))
        if key not in self.rows:
            self.rows[key] = LayerMacs(name, kind, module=module, weight=weight)
        self.rows[key].dense += dense
        self.rows[key].effective += effective

    def _weight_operand(self, operands, module: nn.Module):
        """(the weight, the operand viewing it) among an op's multiplied tensors, or (None, None)."""
        operands = [t for t in operands if isinstance(t, torch.Tensor) and _storage(t)]  # 0: no memory (meta)
        for t in operands:
            if _storage(t) in self.params:
                return self.params[_storage(t)], t
        attributes = {_storage(v): v for v in vars(module).values() if isinstance(v, torch.Tensor) and _storage(v)}
        for t in operands:
            if _storage(t) in attributes:
                return attributes[_storage(t)], t
        return None, None

    def _nonzero(self, t: torch.Tensor) -> int:
        if _storage(t) not in self.params:  # a per-call tensor (masked weight): its memory may be reused
            return int(torch.count_nonzero(t))
        key = (_storage(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key not in self.nonzero_cache:
            self.nonzero_cache[key] = int(torch.count_nonzero(t))
        return self.nonzero_cache[key]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _scale(macs: int, nonzero: int, numel: int) -> int:
    """``macs · nonzero / numel``, rounded, in integers (exact when every weight is used equally often)."""
    return (2 * macs * nonzero + numel) // (2 * numel)


def _first_tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) parameter counts."""
    with torch.no_grad():
        total = sum(p.numel() for p in model.parameters())
        nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return total, nonzero
