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

4. spconv's CPU convolution (the "native" algorithm, 2.3) is a Python loop over kernel offsets: per
   offset a gather, a small matmul and a scatter-add (backward: two gathers, two matmuls, a scatter), each
   through several Python and tensor-view calls. For CPU float tensors in spconv's weight layout,
   ``ops.indice_conv`` and ``ops.indice_conv_backward`` now take every offset at once: spconv's pair table
   (padded with -1 per offset) is used as a padded ``[offsets, width]`` layout, so a layer is one gather,
   one ``torch.bmm`` and one sum (a cached CSR product for submanifold convs, whose tables are shared by
   forward, backward and usually several layers; ``index_add_`` for strided ones), and the backward the
   same plus a ``bmm`` for the weight gradient. A submanifold conv's input gradient is a forward pass with
   mirrored offsets (its pairs come in mirrored couples), so it reuses the same CSR matrix. Every kernel
   is deterministic: results do not change from call to call or with threads; they differ from spconv's
   loop by float rounding only (another summation order).
5. Index pairs are computed once per coordinates tensor and geometry: a second sparse convolution with
   the same indices, kernel, stride, padding and dilation (e.g. a SparseConvTensor rebuilt with
   ``replace_feature`` from a tensor that had not seen an ``indice_key`` yet) reuses the first one's
   pairs instead of running spconv's pair search again.

With CUDA present nothing about the stream is replaced; the bias wrapper, the thread guard, the batched
convolution and the pair cache only act on CPU tensors. ``apply`` is idempotent.

Recognising sparse convolutions and reading their weight layout is ``sparse_lab.spconv_layout``'s job.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import warnings
import weakref
from typing import NamedTuple

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


_CACHE: collections.OrderedDict = collections.OrderedDict()  # (attr, id(tensor), key) -> (ref, versions, value)
_CACHE_SIZE = 256  # entries; a training step of E-3DSNN makes about 30, older batches' are dropped


def _cached(tensor: torch.Tensor, attr: str, key: tuple, sources: tuple, compute):
    """``compute()`` memoised for ``tensor`` under ``key`` while ``tensor`` lives, in a bounded LRU cache;
    recomputed when any tensor it was computed from (``sources``) changed in place. Inference tensors keep no
    version counter: for them nothing is cached. Not on the tensor itself (a Python attribute): torch then
    keeps the Python object alive with the tensor, and a cached value holding the tensor (a submanifold
    conv's output indices are its input indices) leaked every batch's pairs (~100 MB/s training E-3DSNN)."""
    if any(t.is_inference() for t in sources):
        return compute()
    versions = tuple(t._version for t in sources)
    slot = (attr, id(tensor), key)
    hit = _CACHE.get(slot)
    if hit is not None and hit[0]() is tensor and hit[1] == versions:
        _CACHE.move_to_end(slot)
        return hit[2]
    value = compute()
    _CACHE[slot] = (weakref.ref(tensor), versions, value)
    _CACHE.move_to_end(slot)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


_batched = True  # points 4 and 5 on (see ``spconv_loops``)


@contextlib.contextmanager
def spconv_loops():
    """Inside: spconv's own CPU convolution (a loop over kernel offsets) and a pair search on every call,
    i.e. points 4 and 5 off. For benchmarks that compare the two; the results agree to rounding."""
    global _batched
    before, _batched = _batched, False
    try:
        yield
    finally:
        _batched = before


def _cached_pairs(fn):
    """``ops.get_indice_pairs`` computed once per coordinates tensor and geometry (point 5 above)."""

    @functools.wraps(fn)
    def wrapper(indices, batch_size, spatial_shape, algo, ksize, stride, padding, dilation, out_padding, *rest, **kw):
        if indices.is_cuda or not _batched:
            return fn(
                indices, batch_size, spatial_shape, algo, ksize, stride, padding, dilation, out_padding, *rest, **kw
            )
        key = (batch_size, *(tuple(a) for a in (spatial_shape, ksize, stride, padding, dilation, out_padding)))
        key += (algo, rest, tuple(sorted(kw.items())))
        return _cached(
            indices,
            "_sparse_lab_pairs",
            key,
            (indices,),
            lambda: fn(
                indices, batch_size, spatial_shape, algo, ksize, stride, padding, dilation, out_padding, *rest, **kw
            ),
        )

    wrapper._sparse_lab_cached_pairs = True
    return wrapper


class _Pairs(NamedTuple):
    """The active (input, output) pairs of a native sparse convolution in a padded, offset-major layout: the
    pairs of the ``k``-th kernel offset that has any fill block ``k`` of ``[K', width]``. Rows are counted
    from 1: row 0 is a row of zeros put in front of the inputs and a discarded row in front of the outputs,
    where the rest of each block points."""

    offsets: torch.Tensor  # [K'] int64, the kernel offsets with pairs
    mirrored: torch.Tensor  # [K'] int64, their mirror images K - 1 - k (a submanifold conv's backward)
    counts: list[int]  # pairs per block
    inputs: torch.Tensor  # [K' * width] int64, 1 + rows of the features read (padding: 0)
    outputs: torch.Tensor  # [K' * width] int64, 1 + rows of the output written (padding: 0)


def _pair_lists(indice_pairs: torch.Tensor, indice_pair_num: torch.Tensor, inverse: bool, subm: bool) -> _Pairs:
    """spconv's ``[2, K, N]`` pair table in the layout of :class:`_Pairs`: offset ``k``'s pairs first in row
    ``k``, then -1 (spconv fills the table with -1), so the first ``width`` columns of the rows with pairs,
    plus one, are that layout. A submanifold conv's table counts only the offsets before the centre; offset
    ``k`` after it has as many pairs as its mirror ``K - 1 - k`` (the same pairs, swapped, in the same order);
    the centre (every site with itself) is left to a plain matmul."""

    def compute() -> _Pairs:
        counts = indice_pair_num.tolist()
        kv = len(counts)
        if subm:
            counts = [0 if k == kv // 2 else counts[min(k, kv - 1 - k)] for k in range(kv)]
        used = [k for k, n in enumerate(counts) if n]
        offsets = torch.tensor(used, dtype=torch.int64)
        width = max(counts)
        block = (indice_pairs.index_select(1, offsets)[:, :, :width] + 1).long().reshape(2, -1)
        return _Pairs(
            offsets, kv - 1 - offsets, [counts[k] for k in used], block[int(inverse)], block[int(not inverse)]
        )

    return _cached(indice_pairs, "_sparse_lab_pair_lists", (inverse, subm), (indice_pairs, indice_pair_num), compute)


def _summing_matrix(indice_pairs: torch.Tensor, indice_pair_num: torch.Tensor, rows: int, dtype) -> torch.Tensor:
    """A submanifold conv's CSR matrix ``[rows, K' * width]`` of ones that adds the pair rows of a tensor in the
    layout of :class:`_Pairs` into their output rows, each row's pairs in offset order. Built once per pair
    table and used by the forward and backward of every layer sharing it: CSR x dense is several times faster
    than ``index_add_`` here. The column order is a counting sort (a row has at most one pair per offset, so
    a pair's place in its row is the number of earlier offsets that row has pairs at); ``argsort`` costs
    several times more."""

    def compute() -> torch.Tensor:
        pairs = _pair_lists(indice_pairs, indice_pair_num, False, True)
        count, width = torch.tensor(pairs.counts), len(pairs.outputs) // len(pairs.counts)
        kernel = torch.repeat_interleave(torch.arange(len(count)), count)  # the block of each real pair
        real = kernel * width + torch.arange(len(kernel)) - (torch.cumsum(count, 0) - count).index_select(0, kernel)
        target = pairs.outputs.index_select(0, real) - 1
        cell = kernel * rows + target  # (offset, row), unique per pair
        present = torch.zeros(len(pairs.offsets) * rows, dtype=torch.int64).index_fill_(0, cell, 1)
        present = present.view(len(pairs.offsets), rows)
        earlier = (torch.cumsum(present, 0) - present).view(-1).index_select(0, cell)
        crow = torch.zeros(rows + 1, dtype=torch.int64)
        torch.cumsum(present.sum(0), 0, out=crow[1:])
        columns = torch.empty_like(target).index_copy_(0, crow.index_select(0, target) + earlier, real)
        ones = torch.ones(len(target), dtype=dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
            return torch.sparse_csr_tensor(crow, columns, ones, (rows, len(pairs.inputs)), check_invariants=False)

    return _cached(indice_pairs, "_sparse_lab_summing", (rows, dtype), (indice_pairs, indice_pair_num), compute)


def _gather(rows: torch.Tensor, index: torch.Tensor, blocks: int) -> torch.Tensor:
    """``rows`` (with a zero row put in front) at ``index``, as ``[blocks, width, C]``."""
    padded = torch.cat([rows.new_zeros((1, rows.shape[1])), rows])
    return padded.index_select(0, index).view(blocks, -1, rows.shape[1])


def _add_pairs(partial, rows: int, indice_pairs, indice_pair_num, pairs: _Pairs, subm: bool) -> torch.Tensor:
    """``[rows, C]``: for every pair, its row of ``partial`` ([K', width, C]) added to the pair's output row. A
    CSR product for a submanifold conv (its table is reused by forward, backward and usually several layers),
    ``index_add_`` for a strided one (used once; the padding goes to the discarded row 0)."""
    partial = partial.reshape(-1, partial.shape[-1])
    if subm:
        return _summing_matrix(indice_pairs, indice_pair_num, rows, partial.dtype) @ partial
    summed = partial.new_zeros((rows + 1, partial.shape[1])).index_add_(0, pairs.outputs, partial)
    return summed[1:].clone()  # not a view: spconv's callers add biases in place


def _batched_conv_applies(features, filters, algo, bias=None, act_type=None) -> bool:
    """Our batched CPU path covers spconv 2.x's weight layout ([C_out, *kernel, C_in]), float features,
    the native algorithm, no fused bias or activation (spconv's CPU path refuses those too)."""
    from spconv.core import ConvAlgo
    from spconv.pytorch import conv

    return (
        features.device.type == "cpu"
        and features.dtype in (torch.float32, torch.float64)
        and filters.dtype == features.dtype
        and getattr(conv, "ALL_WEIGHT_IS_KRSC", False)
        and algo == ConvAlgo.Native
        and bias is None
        and (act_type is None or act_type == _no_activation())
    )


def _kernel_major(filters: torch.Tensor) -> torch.Tensor:
    """KRSC ``[C_out, *kernel, C_in]`` -> ``[K, C_out, C_in]`` (a view)."""
    return filters.reshape(filters.shape[0], -1, filters.shape[-1]).transpose(0, 1)


def _batched_indice_conv(fn):
    """``ops.indice_conv`` with every kernel offset in one gather, grouped matmul and scatter (point 4)."""

    @functools.wraps(fn)
    def indice_conv(features, filters, indice_pairs, indice_pair_num, num_activate_out, inverse=False, subm=False,
                    algo=None, timer=None, bias=None, act_alpha=0.0, act_beta=0.0, act_type=None, **kw):  # fmt: skip
        from spconv.core import ConvAlgo

        algo = ConvAlgo.Native if algo is None else algo
        if kw or not _batched or not _batched_conv_applies(features, filters, algo, bias, act_type):
            passed = dict(algo=algo, bias=bias, act_alpha=act_alpha, act_beta=act_beta, **kw)
            if timer is not None:
                passed["timer"] = timer
            if act_type is not None:
                passed["act_type"] = act_type
            return fn(features, filters, indice_pairs, indice_pair_num, num_activate_out, inverse, subm, **passed)
        weight = _kernel_major(filters)  # [K, C_out, C_in]
        pairs = _pair_lists(indice_pairs, indice_pair_num, inverse, subm)
        if len(pairs.offsets):
            blocks = _gather(features, pairs.inputs, len(pairs.offsets))  # [K', width, C_in]
            partial = torch.bmm(blocks, weight.index_select(0, pairs.offsets).transpose(1, 2))
            out = _add_pairs(partial, num_activate_out, indice_pairs, indice_pair_num, pairs, subm)
        else:
            out = features.new_zeros((num_activate_out, filters.shape[0]))
        if subm:  # the centre offset pairs every site with itself, as in spconv
            out.addmm_(features, weight[weight.shape[0] // 2].T)
        return out

    indice_conv._sparse_lab_batched = True
    return indice_conv


def _batched_indice_conv_backward(fn):
    """``ops.indice_conv_backward`` with every kernel offset at once (point 4): input and weight gradients."""

    @functools.wraps(fn)
    def indice_conv_backward(features, filters, out_bp, indice_pairs, indice_pair_num, inverse=False, subm=False,
                             algo=None, timer=None, **kw):  # fmt: skip
        from spconv.core import ConvAlgo

        algo = ConvAlgo.Native if algo is None else algo
        if kw or not _batched or not _batched_conv_applies(features, filters, algo) or out_bp.dtype != features.dtype:
            passed = dict(algo=algo, **kw)
            if timer is not None:
                passed["timer"] = timer
            return fn(features, filters, out_bp, indice_pairs, indice_pair_num, inverse, subm, **passed)
        weight = _kernel_major(filters)  # [K, C_out, C_in]
        kv, centre = weight.shape[0], weight.shape[0] // 2
        dweight = features.new_zeros((kv, filters.shape[0], filters.shape[-1]))
        pairs = _pair_lists(indice_pairs, indice_pair_num, inverse, subm)
        if len(pairs.offsets):
            blocks = len(pairs.offsets)
            grad_out = _gather(out_bp, pairs.outputs, blocks)  # [K', width, C_out]
            if subm:  # pairs (i -> o, offset k) and (o -> i, offset K-1-k) come together: a forward pass
                partial = torch.bmm(_gather(out_bp, pairs.inputs, blocks), weight.index_select(0, pairs.mirrored))
                din = _add_pairs(partial, len(features), indice_pairs, indice_pair_num, pairs, subm)
            else:
                partial = torch.bmm(grad_out, weight.index_select(0, pairs.offsets))
                din = partial.new_zeros((len(features) + 1, features.shape[1]))
                din = din.index_add_(0, pairs.inputs, partial.reshape(-1, features.shape[1]))[1:].clone()
            inputs = _gather(features, pairs.inputs, blocks)  # [K', width, C_in]
            dweight.index_copy_(0, pairs.offsets, torch.bmm(grad_out.transpose(1, 2), inputs))
        else:
            din = torch.zeros_like(features)
        if subm:
            din.addmm_(out_bp, weight[centre])
            torch.mm(out_bp.T, features, out=dweight[centre])
        return din, dweight.transpose(0, 1).reshape(filters.shape)

    indice_conv_backward._sparse_lab_batched = True
    return indice_conv_backward


def _patch_native_conv() -> None:
    from spconv.pytorch import ops

    if not getattr(ops.get_indice_pairs, "_sparse_lab_cached_pairs", False):
        ops.get_indice_pairs = _cached_pairs(ops.get_indice_pairs)
    if not getattr(ops.indice_conv, "_sparse_lab_batched", False):
        ops.indice_conv = _batched_indice_conv(ops.indice_conv)
    if not getattr(ops.indice_conv_backward, "_sparse_lab_batched", False):
        ops.indice_conv_backward = _batched_indice_conv_backward(ops.indice_conv_backward)


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
    _patch_native_conv()
    _applied = True


apply()
