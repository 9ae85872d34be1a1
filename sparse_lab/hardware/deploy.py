"""The deployed model: the trained model as it would ship, saved as a ``torch.export`` program.

``deploy(model, example_input, path)`` builds it in four steps:

1. **Inference copy** (``inference_copy``): a deep copy in eval mode with everything training-only gone.
   Masks are already folded (methods multiply weights in place; N:M applies its final mask and removes
   its forward hooks at the end of fit); what a method or a user may still leave is folded here:
   ``torch.nn.utils.parametrize`` parametrizations and ``torch.nn.utils.prune`` re-parametrizations
   (their current value becomes the plain weight), learnable channel gates of a channel method that did
   not remove channels (folded into the layer that reads them, through the model's declared
   ``protocols.ChannelGroups``), and any forward hook left on a module (listed in the record). A
   channel-pruned model is already physically narrow (MaskSparsity replaced it in round 1).
2. **Kernel choice** (``choose_kernels``): every sparse enough ``nn.Linear`` is timed dense and with the
   device's sparse kernel -- ``torch.sparse`` CSR on the CPU, semi-structured 2:4 on a CUDA GPU -- on the
   input it really receives, at batch 1 and at the data's batch size, interleaved. The sparse kernel is
   chosen only where it is faster at every batch size by a margin, so the deployed form is never slower
   than dense by choice.
3. **Export** (``export_program``): ``torch.export.export`` with a dynamic batch dimension, saved with
   ``torch.export.save``, loaded back and checked against the inference copy's output.
4. **Fallbacks**: ``torch.export`` traces a CSR weight only with static shapes (with a dynamic batch there
   is no fake-tensor kernel for the sparse matmul), and ``torch.export.save`` cannot store it (the pt2
   archive asks every weight for ``is_contiguous``, which sparse CSR tensors do not have; torch 2.14).
   Whether the device's kernel can be shipped is probed once per process (``kernel_export_problem``); if
   not, nothing is timed and every eligible layer is recorded dense with that reason. A layer whose
   kernel passed the probe but fails in the full model's export goes back to dense, reason recorded. A
   model ``torch.export`` cannot trace at all (spconv's sparse convolutions are not aten operators) is
   recorded as ``{"status": "not exported", "reason": ...}`` and the run goes on.

The program loads and runs with torch alone: ``torch.export.load(path).module()(x)``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import logging
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparse_lab.hardware.ampere import holds_nm
from sparse_lab.measure.latency import compare_ms, interleaved
from sparse_lab.surgery import declared_groups

log = logging.getLogger(__name__)

MIN_SPARSITY = 0.5  # below this no sparse kernel beats dense (CSR breaks even near 80-90% on CPU)
MARGIN = 0.9  # a sparse kernel must take at most this fraction of the dense time (timing noise)
KERNEL_MIN_RUN_TIME_S = 0.02  # per layer and variant: layers are small, and a run times them all
OUTPUT_ATOL = 1e-4  # deployed vs trained outputs (fp32; sparse kernels sum in another order)

# timer(layer name, {"dense": call, "<kernel>": call}) -> seconds per call of each; injectable for tests.
Timer = Callable[[str, dict[str, Callable[[], object]]], dict[str, float]]


@dataclass
class Deployment:
    module: nn.Module  # what runs: the loaded program's module, or the inference copy when not exported
    status: str  # "exported" | "not exported"
    reason: str | None = None
    path: Path | None = None
    kernels: dict[str, dict] = field(default_factory=dict)  # per timed layer: times and the kernel used
    folded: dict[str, list[str]] = field(default_factory=dict)  # training-only pieces removed, by kind
    max_abs_diff: float | None = None  # loaded program vs inference copy, on the example input
    eager: nn.Module | None = None  # the module whose operators the program holds (what is timed)

    def record(self) -> dict:
        """What results.json keeps under ``deployed``."""
        out = {"status": self.status, "reason": self.reason, "path": self.path and self.path.name}
        out.update(kernels=self.kernels, folded=self.folded, max_abs_diff=self.max_abs_diff)
        return out


# -- 1. inference copy ---------------------------------------------------------------------------------
def inference_copy(model: nn.Module) -> tuple[nn.Module, dict[str, list[str]]]:
    """A deep copy in eval mode without parametrizations, prune re-parametrizations, gates or hooks."""
    module = copy.deepcopy(model).eval()
    folded = {
        "parametrizations": _fold_parametrizations(module),
        "prune_reparametrizations": _fold_prune(module),
        "gates": _fold_gates(module),
        "hooks": _remove_hooks(module),
    }
    return module, {kind: names for kind, names in folded.items() if names}


def _fold_parametrizations(model: nn.Module) -> list[str]:
    done = []
    for name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
                done.append(f"{name}.{tensor_name}")
    return done


def _fold_prune(model: nn.Module) -> list[str]:
    from torch.nn.utils import prune

    done = []
    for name, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                done.append(f"{name}.{hook._tensor_name}")
    return done


@torch.no_grad()
def _fold_gates(model: nn.Module) -> list[str]:
    """Keep every channel of each gated group: the group's surgery folds the gate into its reader."""
    gates = {id(p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "gate"}
    if not gates:
        return []
    done = []
    for group in declared_groups(model, add_gates=False)[1]:
        if id(group.scale) in gates:
            group.keep(torch.arange(group.size))
            done.append(group.name)
    return done


def _remove_hooks(model: nn.Module) -> list[str]:
    """Forward hooks a training-time callback left behind (nothing of the model's own computation)."""
    done = []
    for name, module in model.named_modules():
        if module._forward_pre_hooks or module._forward_hooks:
            module._forward_pre_hooks.clear()
            module._forward_hooks.clear()
            done.append(name)
    return done


# -- 2. sparse kernels --------------------------------------------------------------------------------
class CsrLinear(nn.Module):
    """``nn.Linear`` with its weight in CSR: ``y = (b + W xᵀ)ᵀ`` by ``torch.addmm`` on a sparse ``W``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # "sparse CSR support is in beta": said once per layer otherwise
            warnings.simplefilter("ignore", UserWarning)
            self.register_buffer("weight", linear.weight.detach().to_sparse_csr())
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(self.out_features)
        self.register_buffer("bias", bias.to(linear.weight).unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A contiguous xᵀ: MKL's CSR × dense is 1.5-3x faster on it than on a transposed view (measured).
        flat = x.reshape(-1, self.in_features).t().contiguous()
        return torch.addmm(self.bias, self.weight, flat).t().reshape(*x.shape[:-1], self.out_features)


def semi_structured_linear(linear: nn.Linear) -> nn.Linear:
    """A copy of ``linear`` whose weight is a semi-structured 2:4 tensor (CUDA; cuSPARSELt / CUTLASS)."""
    if not holds_nm(linear.weight, 2, 4):
        raise ValueError("weight is not 2:4 sparse along its input dimension")
    layer = copy.deepcopy(linear)
    layer.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
    return layer


def sparse_kernel(device: torch.device | str) -> tuple[str, Callable[[nn.Linear], nn.Module]]:
    """The device's sparse kernel for a linear layer: (its name, a builder)."""
    if torch.device(device).type == "cuda":
        return "semi_structured_2to4", semi_structured_linear
    return "csr", CsrLinear


@functools.cache
def kernel_export_problem(device: torch.device) -> str | None:
    """Why a program holding the device's sparse kernel cannot be exported and saved (None: it can).

    Probed once per device on a small layer, so a run does not time kernels it could not ship."""
    kind, build = sparse_kernel(device)
    layer = nn.Linear(64, 64, device=device)
    with torch.no_grad():
        layer.weight[:, 1::2] = 0  # 2:4 and 50% zeros: every kernel accepts it
    problems = []
    for dynamic_batch in (True, False):  # static shapes too, only to say what else stops it
        try:
            export_program(build(layer), torch.randn(2, 64, device=device), io.BytesIO(), dynamic_batch)
        except Exception as exc:  # noqa: BLE001  whatever stops it is the recorded reason
            problems.append(f"{'dynamic batch' if dynamic_batch else 'static shapes'}: {_reason(exc)}")
        else:
            break
    if not problems:
        return None
    return f"torch.export cannot carry the {kind} kernel ({'; '.join(problems)})"


def default_timer(name: str, calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    times = interleaved(calls, rounds=2, min_run_time=KERNEL_MIN_RUN_TIME_S)
    return {variant: min(t) for variant, t in times.items()}  # min over rounds: least disturbed by load


def zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


@torch.no_grad()
def linear_inputs(model: nn.Module, batches: list) -> dict[str, list[torch.Tensor]]:
    """The input each ``nn.Linear`` receives on each of ``batches`` (one forward per batch)."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(args[0]))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@torch.no_grad()
def choose_kernels(
    model: nn.Module,
    batches: list,
    device: torch.device,
    timer: Timer = default_timer,
    min_sparsity: float = MIN_SPARSITY,
    margin: float = MARGIN,
    unavailable: str | None = None,
) -> dict[str, dict]:
    """Per ``nn.Linear`` at least ``min_sparsity`` zero: the kernel to deploy, with the times behind the choice.

    ``batches``: inputs of the model at each batch size that matters (batch 1, the data's batch size).
    The sparse kernel wins only where it takes at most ``margin`` × the dense time at every batch size.
    ``unavailable``: why the sparse kernel cannot be deployed at all (nothing is timed; dense everywhere)."""
    kind, build = sparse_kernel(device)
    sparsities = {name: zero_fraction(m.weight) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    sparsities = {name: s for name, s in sparsities.items() if s >= min_sparsity}
    if unavailable or not sparsities:  # nothing to time: no forward pass
        return {
            name: {"sparsity": round(s, 4), "kernel": "dense", "reason": unavailable} for name, s in sparsities.items()
        }
    choices = {}
    for name, inputs in linear_inputs(model, batches).items():
        if name not in sparsities:
            continue
        layer, sparsity = model.get_submodule(name), sparsities[name]
        row = {"sparsity": round(sparsity, 4), "kernel": "dense", "dense_ms": [], f"{kind}_ms": []}
        try:
            sparse = build(layer)
        except (ValueError, RuntimeError, NotImplementedError) as exc:  # e.g. shapes the 2:4 kernels refuse
            choices[name] = {**row, "reason": f"{kind} kernel unavailable: {exc}"}
            continue
        for x in inputs:
            times = timer(name, {"dense": functools.partial(layer, x), kind: functools.partial(sparse, x)})
            row["dense_ms"].append(float(f"{times['dense'] * 1e3:.4g}"))
            row[f"{kind}_ms"].append(float(f"{times[kind] * 1e3:.4g}"))
        if all(s <= margin * d for s, d in zip(row[f"{kind}_ms"], row["dense_ms"])):
            row["kernel"] = kind
        choices[name] = row
    return choices


def with_kernels(model: nn.Module, choices: dict[str, dict], device: torch.device) -> nn.Module:
    """A copy of ``model`` with the chosen sparse kernels in place of those layers."""
    _, build = sparse_kernel(device)
    out = copy.deepcopy(model)
    for name, row in choices.items():
        if row["kernel"] != "dense":
            out.set_submodule(name, build(out.get_submodule(name)))
    return out


# -- 3. export ----------------------------------------------------------------------------------------
class FromTensors(nn.Module):
    """``model`` called on a dataclass input (e.g. a voxel batch) rebuilt from its tensor fields: a program
    loaded with torch alone cannot take an instance of a sparse-lab class, so it takes the tensors."""

    def __init__(self, model: nn.Module, example):
        super().__init__()
        self.model, self.kind = model, type(example)
        values = {f.name: getattr(example, f.name) for f in dataclasses.fields(example)}
        self.tensor_fields = [name for name, value in values.items() if isinstance(value, torch.Tensor)]
        self.constants = {name: value for name, value in values.items() if name not in self.tensor_fields}

    def forward(self, *tensors: torch.Tensor):
        return self.model(self.kind(**dict(zip(self.tensor_fields, tensors)), **self.constants))

    def arguments(self, example) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(example, name) for name in self.tensor_fields)


class CalledWithFields(nn.Module):
    """A loaded program that takes a dataclass's tensor fields, called with the dataclass (for timing)."""

    def __init__(self, program: nn.Module, fields: list[str]):
        super().__init__()
        self.program, self.fields = program, fields

    def forward(self, example):
        return self.program(*(getattr(example, name) for name in self.fields))


def export_program(module: nn.Module, example_input, path: Path | io.BytesIO, dynamic_batch: bool = True) -> nn.Module:
    """Export ``module`` (dynamic batch for a tensor input), save it to ``path`` (a file or a buffer), and
    return the loaded program's module, which takes what ``module`` takes. For a dataclass input the
    saved program takes the dataclass's tensor fields, in field order (``FromTensors``)."""
    if isinstance(example_input, torch.Tensor) and dynamic_batch:
        # A batch of 2 to trace: torch.export specialises a size-1 dimension to the constant 1.
        args = (torch.cat([example_input, example_input]),)
        dynamic = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
    elif dataclasses.is_dataclass(example_input):
        module = FromTensors(module, example_input)
        args, dynamic = module.arguments(example_input), None
    else:
        args, dynamic = (example_input,), None
    program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
    target = path if isinstance(path, io.BytesIO) else str(path)
    torch.export.save(program, target)
    if isinstance(target, io.BytesIO):
        target.seek(0)
    loaded = torch.export.load(target).module()
    return CalledWithFields(loaded, module.tensor_fields) if isinstance(module, FromTensors) else loaded


def _reason(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


@torch.no_grad()
def _checked(program: nn.Module, reference: nn.Module, example_input) -> float:
    """Largest |program − reference| on the example; an error where they disagree."""
    expected, got = reference(example_input), program(example_input)
    diff = max((e - g).abs().max().item() for e, g in zip(_tensors(expected), _tensors(got)))
    if diff > OUTPUT_ATOL * max(1.0, max(e.abs().max().item() for e in _tensors(expected))):
        raise RuntimeError(f"the exported program's output differs from the model's by {diff:.3g}")
    return diff


def _tensors(output) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]


# -- all together -------------------------------------------------------------------------------------
def deploy(
    model: nn.Module,
    example_input,
    path: Path,
    *,
    device: torch.device | str = "cpu",
    batch_input=None,
    timer: Timer = default_timer,
    select_kernels: bool = True,
) -> Deployment:
    """Build, export and save the deployed form of ``model`` (see the module docstring).

    ``example_input``: one sample (batch 1) on ``device``; ``batch_input``: the same at the data's batch
    size, or None. The returned ``Deployment.module`` is the loaded program (or, when the model cannot be
    exported, the inference copy), ready to time."""
    device = torch.device(device)
    path = Path(path)
    path.unlink(missing_ok=True)  # never leave an older program beside a new record
    module, folded = inference_copy(model)
    module.to(device)
    kernels = {}
    if select_kernels:
        batches = [example_input] + ([batch_input] if batch_input is not None else [])
        try:
            kernels = choose_kernels(module, batches, device, timer, unavailable=kernel_export_problem(device))
        except Exception as exc:  # noqa: BLE001  a model the layer hooks cannot run (then export will say more)
            log.warning("deploy: kernel choice skipped: %s", _reason(exc))
    deployment = Deployment(module, "not exported", path=None, kernels=kernels, folded=folded, eager=module)
    if any(row["kernel"] != "dense" for row in kernels.values()):
        _export_into(deployment, with_kernels(module, kernels, device), module, example_input, path)
        if deployment.status != "exported":  # the sparse kernels cannot be exported: deploy dense layers
            for row in kernels.values():
                if row["kernel"] != "dense":
                    row["reason"] = f"chosen ({row['kernel']} faster) but not exportable: {deployment.reason}"
                    row["kernel"] = "dense"
    if deployment.status != "exported":
        _export_into(deployment, module, module, example_input, path)
    return deployment


def _export_into(deployment: Deployment, candidate: nn.Module, reference: nn.Module, example_input, path: Path):
    try:
        program = export_program(candidate, example_input, path)
        deployment.max_abs_diff = _checked(program, reference, example_input)
    except Exception as exc:  # noqa: BLE001  any tracing failure is a recorded reason, not a failed run
        path.unlink(missing_ok=True)
        deployment.reason = f"torch.export: {_reason(exc)}"
        packages = {type(m).__module__.split(".")[0] for m in candidate.modules()}
        foreign = sorted(packages - {"torch", "sparse_lab", type(reference).__module__.split(".")[0]})
        if foreign:  # the usual cause: a library's own kernels (spconv), which are not aten operators
            deployment.reason += f" (layers from {', '.join(foreign)}: kernels outside torch, not aten operators)"
        log.warning("deploy: %s not exported (%s)", type(candidate).__name__, deployment.reason)
        return
    deployment.module, deployment.status, deployment.reason, deployment.path = program, "exported", None, path
    deployment.eager = candidate


# -- the run's figures --------------------------------------------------------------------------------
def batched(example_input, batch_size: int | None):
    """``example_input`` repeated to ``batch_size`` samples (tensor inputs only; None otherwise)."""
    if not isinstance(example_input, torch.Tensor) or not batch_size or batch_size <= 1:
        return None
    return example_input.expand(batch_size, *example_input.shape[1:]).contiguous()


def deploy_and_time(
    model: nn.Module,
    dense_reference: nn.Module,
    example_input,
    path: Path,
    *,
    device: torch.device | str,
    batch_size: int | None,
    reference_macs: float,
    target_macs: float,
    rounds: int = 2,
    export: bool = True,
    measure: bool = True,
) -> tuple[dict, dict]:
    """Deploy ``model`` and time it against ``dense_reference`` (the architecture as built, dense kernels):
    (metrics for results.json, the deployment record).

    ``speedup/macs`` is the dense reference's MACs over the MACs the target executes for the deployed
    model; ``speedup/realised`` is the measured speed-up as a fraction of it. ``export=False`` skips the
    program (the inference copy is timed); ``measure=False`` skips the timing (config ``deploy.*``)."""
    batch = batched(example_input, batch_size)
    if export:
        deployment = deploy(model, example_input, path, device=device, batch_input=batch)
    else:
        module, folded = inference_copy(model)
        module.to(device)
        deployment = Deployment(module, "not exported", reason="deploy.export=false", folded=folded, eager=module)
    metrics = {"speedup/macs": reference_macs / target_macs if target_macs else float("nan")}
    record = deployment.record() | {"timed": None}
    if not measure:
        return metrics, record
    dense = dense_reference.to(device).eval()
    inputs = {"": example_input} | ({f"_b{batch_size}": batch} if batch is not None else {})
    # The program's operators, run eagerly: a loaded program called from Python dispatches every aten op
    # from Python (0.8-0.9x of eager at batch 1 on small models), a cost deployment runtimes do not have.
    times = compare_ms({"dense": dense, "deployed": deployment.eager}, inputs, rounds=rounds)
    for suffix in inputs:
        dense_ms, deployed_ms = statistics.median(times["dense", suffix]), statistics.median(times["deployed", suffix])
        metrics[f"latency/dense_ms{suffix}"] = dense_ms
        metrics[f"latency/deployed_ms{suffix}"] = deployed_ms
        metrics[f"speedup/measured{suffix}"] = dense_ms / deployed_ms
        metrics[f"speedup/realised{suffix}"] = metrics[f"speedup/measured{suffix}"] / metrics["speedup/macs"]
    record["timed"] = "the deployed operators, eager (the program's, when exported)"
    return metrics, record
