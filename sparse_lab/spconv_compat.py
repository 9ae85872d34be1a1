"""spconv on machines without CUDA: backward passes and eval-mode biases that work on the CPU.

Import ``spconv`` through this module (``from sparse_lab.spconv_compat import spconv``) or call
:func:`apply` before using it. Three gaps of spconv's CPU build are closed, once per process:

1. Backward asks CUDA for the current stream even for CPU tensors
   (``torch.cuda.current_stream().cuda_stream`` raises without a GPU). When CUDA is unavailable,
   ``get_current_stream`` is replaced by a function returning 0 (the default stream, which the CPU
   kernels ignore) in every ``spconv.pytorch`` module that bound the name: ``cppcore``, ``ops``,
   ``hash`` and ``utils``.
2. In eval mode spconv hands a convolution's bias to a fused kernel that exists only on CUDA
   (``AssertionError: cpu don't support act and bias``). For CPU features with a bias and no fused
   activation, :func:`SparseConvolution._conv_forward <spconv.pytorch.conv.SparseConvolution>` now runs
   without the bias and adds it afterwards, exactly what training mode does. CUDA inputs take
   spconv's own path unchanged.

3. With more than one OpenMP thread, spconv's CPU kernels (2.3) race: the same sparse convolution on
   the same input gives outputs that differ by up to 10% of their magnitude from call to call (a
   3000-site, 16-channel SubMConv3d: max difference 0.47 with two threads, exactly 0 with one). Every
   CPU call of ``spconv.pytorch.ops`` (index pairs, convolution, pooling, forward and backward) now
   runs with one torch thread, the rest of the model keeps its threads. One thread is also the faster
   setting for these kernels here (scripts/bench_spconv.py).

With CUDA present nothing about the stream is replaced; the bias wrapper and the thread guard only act
on CPU tensors. ``apply`` is idempotent.

Recognising sparse convolutions and reading their weight layout is ``sparse_lab.spconv_layout``'s job.
"""

from __future__ import annotations

import functools
import importlib

import spconv  # noqa: F401  (re-exported; `from sparse_lab.spconv_compat import spconv`)
import spconv.pytorch  # noqa: F401
import torch

PATCHED_MODULES = ("spconv.pytorch.cppcore", "spconv.pytorch.ops", "spconv.pytorch.hash", "spconv.pytorch.utils")
_applied = False


def cpu_stream() -> int:
    """The stream handle for CPU kernels: 0 (they ignore it)."""
    return 0


def _patch_streams() -> list[str]:
    patched = []
    for name in PATCHED_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a future spconv without this module
            continue
        if hasattr(module, "get_current_stream"):
            module.get_current_stream = cpu_stream
            patched.append(name)
    return patched


def _patch_cpu_bias() -> None:
    from spconv.pytorch.conv import SparseConvolution
    from spconv.pytorch.core import SparseConvTensor

    original = SparseConvolution._conv_forward
    if getattr(original, "_sparse_lab_cpu_bias", False):
        return

    @functools.wraps(original)
    def _conv_forward(self, training, input, weight, bias, *args, **kwargs):
        act_type = kwargs.get("act_type", getattr(self, "act_type", None))
        if (
            not training
            and bias is not None
            and isinstance(input, SparseConvTensor)
            and not input.features.is_cuda
            and not input.is_quantized
            and act_type == _no_activation()
        ):
            out = original(self, training, input, weight, None, *args, **kwargs)
            return out.replace_feature(out.features + bias)
        return original(self, training, input, weight, bias, *args, **kwargs)

    _conv_forward._sparse_lab_cpu_bias = True
    SparseConvolution._conv_forward = _conv_forward


SINGLE_THREAD_OPS = (
    "get_indice_pairs",
    "get_indice_pairs_implicit_gemm",
    "indice_conv",
    "indice_conv_backward",
    "implicit_gemm",
    "implicit_gemm_backward",
    "indice_maxpool",
    "indice_maxpool_backward",
    "indice_maxpool_implicit_gemm",
    "indice_maxpool_implicit_gemm_backward",
    "indice_avgpool_implicit_gemm",
    "indice_avgpool_implicit_gemm_backward",
)


def _on_cpu(args, kwargs) -> bool:
    tensor = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
    return tensor is not None and tensor.device.type == "cpu"


def _single_threaded(fn):
    """``fn`` with one torch (OpenMP) thread while it runs on CPU tensors (see point 3 above)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        if threads == 1 or not _on_cpu(args, kwargs):
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    wrapper._sparse_lab_single_thread = True
    return wrapper


def _patch_single_thread_ops() -> None:
    from spconv.pytorch import ops

    for name in SINGLE_THREAD_OPS:
        fn = getattr(ops, name, None)
        if fn is not None and not getattr(fn, "_sparse_lab_single_thread", False):
            setattr(ops, name, _single_threaded(fn))


def _no_activation():
    import cumm.tensorview as tv

    return tv.gemm.Activation.None_


def apply() -> None:
    """Make spconv's CPU build usable for training and evaluation (idempotent)."""
    global _applied
    if _applied:
        return
    if not torch.cuda.is_available():
        _patch_streams()
    _patch_cpu_bias()
    _patch_single_thread_ops()
    _applied = True


apply()
