"""spconv's CPU build trains and evaluates through sparse_lab.spconv_compat: outputs and gradients of
sparse convolutions match a dense Conv3d evaluated on the same active sites."""

import contextlib
import importlib

import pytest
import spconv.pytorch as sp
import torch
import torch.nn.functional as F

from sparse_lab import spconv_compat, spconv_layout
from sparse_lab.spconv_compat import spconv  # noqa: F401

SHAPE = (5, 5, 5)


def tiny_cloud(seed=0, cin=2):
    g = torch.Generator().manual_seed(seed)
    # 2 samples, a handful of distinct active voxels each
    coords = []
    for b in range(2):
        flat = torch.randperm(125, generator=g)[:7]
        zyx = torch.stack([flat // 25, (flat // 5) % 5, flat % 5], 1)
        coords.append(torch.cat([torch.full((7, 1), b), zyx], 1))
    coords = torch.cat(coords).int()
    feats = torch.randn(len(coords), cin, generator=g, dtype=torch.float64).float()
    return feats, coords


def to_dense(feats, coords, batch):
    grid = torch.zeros(batch, feats.shape[1], *SHAPE)
    b, z, y, x = coords.long().unbind(1)
    grid[b, :, z, y, x] = feats
    return grid


def gather(grid, coords):
    b, z, y, x = coords.long().unbind(1)
    return grid[b, :, z, y, x]


def dense_weight(conv):
    assert spconv_layout.layout(conv) == "KRSC" and spconv_layout.input_channel_dim(conv) == -1
    return conv.weight.permute(0, 4, 1, 2, 3)  # [C_out, C_in, kD, kH, kW]


@pytest.mark.parametrize("kind", ["subm", "strided"])
def test_forward_and_backward_match_dense_conv3d_on_active_sites(kind):
    torch.manual_seed(0)
    feats, coords = tiny_cloud()
    if kind == "subm":
        conv = sp.SubMConv3d(2, 3, 3, padding=1, bias=True)
        stride = 1
    else:
        conv = sp.SparseConv3d(2, 3, 3, stride=2, padding=1, bias=True)
        stride = 2
    torch.nn.init.normal_(conv.bias)

    sparse_in = feats.clone().requires_grad_(True)
    out = conv(sp.SparseConvTensor(sparse_in, coords, list(SHAPE), 2))
    upstream = torch.randn_like(out.features)
    (out.features * upstream).sum().backward()

    dense_in = to_dense(feats, coords, 2).requires_grad_(True)
    w = dense_weight(conv).detach().clone().requires_grad_(True)
    b = conv.bias.detach().clone().requires_grad_(True)
    dense_out = F.conv3d(dense_in, w, b, stride=stride, padding=1)
    assert list(dense_out.shape[2:]) == list(out.spatial_shape)
    picked = gather(dense_out, out.indices)
    (picked * upstream).sum().backward()

    torch.testing.assert_close(out.features, picked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse_in.grad, gather(dense_in.grad, coords), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.weight.grad.permute(0, 4, 1, 2, 3), w.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.bias.grad, b.grad, atol=1e-5, rtol=1e-5)
    if kind == "strided":  # active outputs: exactly the sites that receive any input
        touched = F.conv3d(
            (dense_in.detach().abs().sum(1, keepdim=True) > 0).float(), torch.ones(1, 1, 3, 3, 3), stride=2, padding=1
        )
        assert len(out.indices) == int((touched > 0).sum())


def test_eval_mode_with_bias_runs_on_cpu_and_equals_training_mode():
    torch.manual_seed(0)
    feats, coords = tiny_cloud(1)
    conv = sp.SubMConv3d(2, 4, 3, padding=1, bias=True)
    torch.nn.init.normal_(conv.bias)
    x = sp.SparseConvTensor(feats, coords, list(SHAPE), 2)
    train_out = conv(x).features
    conv.eval()
    with torch.no_grad():
        eval_out = conv(sp.SparseConvTensor(feats, coords, list(SHAPE), 2)).features
    torch.testing.assert_close(eval_out, train_out.detach())


def test_apply_is_idempotent_and_patches_streams_only_without_cuda():
    wrapped = sp.conv.SparseConvolution._conv_forward
    spconv_compat.apply()
    spconv_compat._applied = False  # force a second real application
    spconv_compat.apply()
    assert sp.conv.SparseConvolution._conv_forward is wrapped  # not wrapped twice
    for name in ("spconv.pytorch.cppcore", "spconv.pytorch.ops", "spconv.pytorch.hash"):
        patched = importlib.import_module(name).get_current_stream is spconv_compat.cpu_stream
        assert patched == (not torch.cuda.is_available())


def test_cpu_kernels_give_the_same_result_on_every_call_with_two_threads():
    """spconv's CPU kernels race with more than one OpenMP thread; the compat guard runs them on one."""
    g = torch.Generator().manual_seed(0)
    sites = torch.unique(torch.randint(0, 24, (3000, 3), generator=g), dim=0)
    coords = torch.cat([torch.zeros(len(sites), 1, dtype=torch.long), sites], 1).int()
    feats = torch.randn(len(coords), 16, generator=g)
    subm = sp.SubMConv3d(16, 16, 3, padding=1, bias=False)
    down = sp.SparseConv3d(16, 16, 3, stride=2, padding=1, bias=False, indice_key="d")
    up = sp.SparseInverseConv3d(16, 16, 3, bias=False, indice_key="d")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for _ in range(4):
            x = sp.SparseConvTensor(feats.clone().requires_grad_(), coords, [24, 24, 24], 1)
            out = up(down(subm(x))).features
            out.square().sum().backward()
            results.append((out.detach(), x.features.grad, subm.weight.grad.clone()))
            subm.zero_grad()
    finally:
        torch.set_num_threads(threads)
    for out, grad_in, grad_w in results[1:]:
        assert (
            torch.equal(out, results[0][0])
            and torch.equal(grad_in, results[0][1])
            and torch.equal(grad_w, results[0][2])
        )


def cloud(sites=600, grid=12, channels=8, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = []
    for b in range(batch):
        zyx = torch.unique(torch.randint(0, grid, (sites, 3), generator=g), dim=0)
        coords.append(torch.cat([torch.full((len(zyx), 1), b), zyx], 1))
    coords = torch.cat(coords).int()
    return torch.randn(len(coords), channels, generator=g, dtype=torch.float64), coords


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_convolution_matches_spconvs_own_loop_in_outputs_and_gradients(dtype):
    """The batched CPU path (every kernel offset at once) against spconv's per-offset loop: a submanifold,
    a strided (overlapping 3^3 windows) and an inverse convolution, forward and backward."""
    feats, coords = cloud()
    torch.manual_seed(0)
    subm = sp.SubMConv3d(8, 12, 3, padding=1, bias=False, indice_key="s").to(dtype)
    down = sp.SparseConv3d(12, 16, 3, stride=2, padding=1, bias=False, indice_key="d").to(dtype)
    up = sp.SparseInverseConv3d(16, 4, 3, bias=False, indice_key="d").to(dtype)
    upstream = None
    results = []
    for loops in (False, True):
        x = feats.to(dtype).requires_grad_(True)
        with spconv_compat.spconv_loops() if loops else contextlib.nullcontext():
            out = up(down(subm(sp.SparseConvTensor(x, coords.clone(), [12, 12, 12], 2)))).features
            if upstream is None:
                upstream = torch.randn_like(out)
            (out * upstream).sum().backward()
        results.append([out.detach(), x.grad] + [m.weight.grad.clone() for m in (subm, down, up)])
        for m in (subm, down, up):
            m.zero_grad()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, **tol)


def test_pair_search_runs_once_per_coordinates_tensor_and_again_after_an_in_place_change():
    feats, coords = cloud(sites=100, channels=4)
    feats = feats.float()

    def pairs_of(key):
        conv = sp.SubMConv3d(4, 4, 3, padding=1, bias=False, indice_key=key)
        out = conv(sp.SparseConvTensor(feats, coords, [12, 12, 12], 2))
        return out.find_indice_pair(key).indice_pairs

    first = pairs_of("a")
    assert pairs_of("b") is first  # a new SparseConvTensor on the same coordinates: no second search
    coords[0, 1] = coords[0, 1]  # an in-place write bumps the version: the pairs are searched again
    again = pairs_of("c")
    assert again is not first and torch.equal(again, first)
    ((_, versions, _),) = [
        v for (attr, i, _), v in spconv_compat._CACHE.items() if (attr, i) == ("_sparse_lab_pairs", id(coords))
    ]
    assert versions == (coords._version,)


def test_pair_layout_is_spconvs_table_offset_by_offset():
    from spconv.pytorch import ops

    _, coords = cloud(sites=200)
    for ksize, stride, padding, subm in (([3] * 3, [1] * 3, [1] * 3, True), ([2] * 3, [2] * 3, [0] * 3, False)):
        _, table, num = ops.get_indice_pairs(
            coords, 2, [12, 12, 12], sp.ConvAlgo.Native, ksize, stride, padding, [1] * 3, [0] * 3, subm, False
        )
        pairs = spconv_compat._pair_lists(table, num, False, subm)
        width = len(pairs.inputs) // len(pairs.offsets)
        for block, (k, n) in enumerate(zip(pairs.offsets.tolist(), pairs.counts)):
            ins = pairs.inputs.view(-1, width)[block]
            outs = pairs.outputs.view(-1, width)[block]
            assert torch.equal(ins[:n] - 1, table[0, k, :n].long()) and torch.equal(
                outs[:n] - 1, table[1, k, :n].long()
            )
            assert (ins[n:] == 0).all() and (outs[n:] == 0).all()  # padding: the zero / discarded row


def test_inference_mode_runs_and_matches_training_mode():
    feats, coords = cloud(sites=100, channels=4)
    conv = sp.SubMConv3d(4, 4, 3, padding=1, bias=False)
    expected = conv(sp.SparseConvTensor(feats.float(), coords.clone(), [12, 12, 12], 2)).features
    with torch.inference_mode():  # inference tensors have no version counter: nothing is cached
        got = conv(sp.SparseConvTensor(feats.float(), coords.clone(), [12, 12, 12], 2)).features
    torch.testing.assert_close(got, expected.detach())


def test_the_pair_cache_is_bounded_and_keeps_nothing_on_the_tensors():
    # Cached on the tensors themselves, every batch's pairs leaked (~100 MB/s training E-3DSNN).
    from sparse_lab import spconv_compat

    calls = []
    for _ in range(spconv_compat._CACHE_SIZE + 10):
        t = torch.zeros(3)
        value = spconv_compat._cached(t, "test", (), (t,), lambda t=t: calls.append(1) or (t, t + 1))
        assert value[0] is t and spconv_compat._cached(t, "test", (), (t,), lambda: None) is value
        assert not t.__dict__
    assert len(calls) == spconv_compat._CACHE_SIZE + 10 and len(spconv_compat._CACHE) <= spconv_compat._CACHE_SIZE
    t += 1  # changed in place: computed again
    assert spconv_compat._cached(t, "test", (), (t,), lambda: "new") == "new"
