"""What a spconv sparse convolution computes: its active input-output pairs, MACs and synaptic operations.

A sparse convolution multiplies a ``C_in`` feature vector by a ``C_in x C_out`` weight slice once per
*active pair* (input site, kernel offset, output site), so

    MACs = pairs x C_in x C_out        (we report MACs)

E-3DSNN's energy script (``energy_calculate.py``, ``calculate_gemm_flops``) counts FLOPs instead:

    FLOPs = 2 x pairs x C_in x C_out - N_out        (N_out: the output's active sites, ``pair_fwd.shape[1]``)

and prices those at E_MAC / E_AC, so its absolute energies are about twice ours. ``paper_flops`` is that
formula; the neuromorphic target's ``op_count: paper_flops`` prices counts in it (``sops.SpikeCounter``).

and, when its inputs are spikes (integer spike counts ``s``), a synaptic operation is one spike
reaching one target neuron:

    SOPs = sum over pairs and input channels of s x C_out   (each spike value counts as that many events).

Pairs are enumerated from the active sites with the convolution's own geometry (kernel, stride,
padding, dilation; submanifold / regular / transposed / inverse), using the cross-correlation
convention of ``torch.nn.functional.conv3d`` (which spconv follows, see tests/test_spconv_compat.py):
output ``o`` reads input ``i = o * stride - padding + k * dilation``. This does not depend on how a
spconv version stores its index pairs (the 2.x CPU build keeps only half of a submanifold kernel).
*Effective* counts skip zero weights exactly, per kernel offset and channel.
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_lab.spconv_layout import kernel_major_weight


def _keys(indices: torch.Tensor, shape: list[int]) -> torch.Tensor:
    b, z, y, x = indices.long().unbind(1)
    return ((b * shape[0] + z) * shape[1] + y) * shape[2] + x


def _offsets(kernel_size, device) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(k, device=device) for k in kernel_size], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], 1)  # [K, 3]


def _member(query_keys: torch.Tensor, sorted_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(found mask, position in sorted_keys) for each query key."""
    pos = torch.searchsorted(sorted_keys, query_keys).clamp_(max=max(len(sorted_keys) - 1, 0))
    found = sorted_keys[pos] == query_keys if len(sorted_keys) else torch.zeros_like(query_keys, dtype=torch.bool)
    return found, pos


@torch.no_grad()
def pair_mask(module: nn.Module, inp, out) -> torch.Tensor:
    """``[K, N_in]`` bool: input site ``n`` is paired with some output site through kernel offset ``k``.

    In every sparse convolution an (input site, offset) determines at most one output site, so the
    number of ``True`` entries is the number of active pairs.
    """
    if len(inp.indices.shape) != 2 or inp.indices.shape[1] != 4:
        raise ValueError("pair counting supports 3D sparse convolutions (indices [N, 4])")
    ind = inp.indices.long()
    device = ind.device
    st = torch.as_tensor(module.stride, device=device)
    pad = torch.as_tensor(module.padding, device=device)
    dil = torch.as_tensor(module.dilation, device=device)
    offsets = _offsets(module.kernel_size, device)  # [K, 3]
    zyx = ind[:, 1:]  # [N, 3]
    if getattr(module, "inverse", False):
        # Inverse of a regular conv: this layer's output sites are that conv's inputs (fine), its input
        # sites that conv's outputs (coarse); pairs are the same, seen from the other side. The geometry
        # is the forward conv's (spconv takes it from the shared indice_key, not from this module).
        data = inp.indice_dict.get(module.indice_key) if module.indice_key is not None else None
        if data is not None and hasattr(data, "stride"):
            st, pad, dil = (torch.as_tensor(v, device=device) for v in (data.stride, data.padding, data.dilation))
            offsets = _offsets(data.ksize, device)
        fine = out.indices.long()
        num = fine[None, :, 1:] + pad - offsets[:, None, :] * dil  # [K, N_out, 3]
        valid = (num % st == 0).all(-1)
        coarse = num.div(st, rounding_mode="floor")
        keys = _keys(
            torch.cat([fine[None, :, :1].expand(len(offsets), -1, -1).reshape(-1, 1), coarse.reshape(-1, 3)], 1),
            list(inp.spatial_shape),
        )
        order = torch.argsort(_keys(ind, list(inp.spatial_shape)))
        found, pos = _member(keys, _keys(ind, list(inp.spatial_shape))[order])
        hit = valid.reshape(-1) & found
        mask = torch.zeros(len(offsets), len(ind), dtype=torch.bool, device=device)
        k_index = torch.arange(len(offsets), device=device).repeat_interleave(len(fine))
        mask[k_index[hit], order[pos[hit]]] = True
        return mask
    if getattr(module, "transposed", False):
        o = zyx[None] * st - pad + offsets[:, None, :] * dil  # [K, N, 3]
        shape = torch.as_tensor(list(out.spatial_shape), device=device)
        return ((o >= 0) & (o < shape)).all(-1)
    num = zyx[None] + pad - offsets[:, None, :] * dil  # o * stride, [K, N, 3]
    o = num.div(st, rounding_mode="floor")
    out_shape = torch.as_tensor(list(out.spatial_shape), device=device)
    valid = (num % st == 0).all(-1) & (o >= 0).all(-1) & (o < out_shape).all(-1)
    if not module.subm:
        return valid
    # Submanifold: the output site must itself be active (outputs = inputs).
    sorted_keys, _ = torch.sort(_keys(ind, list(inp.spatial_shape)))
    batch = ind[None, :, 0].expand(len(offsets), -1).reshape(-1, 1)
    found, _ = _member(_keys(torch.cat([batch, o.reshape(-1, 3)], 1), list(inp.spatial_shape)), sorted_keys)
    return valid & found.reshape(valid.shape)


def _macs(module: nn.Module, mask: torch.Tensor) -> tuple[int, int]:
    pairs_per_offset = mask.sum(1).to(torch.float64)  # [K]
    dense = int(pairs_per_offset.sum().item()) * module.in_channels * module.out_channels
    nonzero = (kernel_major_weight(module) != 0).sum((1, 2)).to(torch.float64)  # [K]
    return dense, int((pairs_per_offset * nonzero).sum().item())


def _sops(module: nn.Module, inp, mask: torch.Tensor) -> tuple[float, float]:
    spikes = mask.to(inp.features.dtype) @ inp.features.detach()  # [K, C_in]
    fan_out = (kernel_major_weight(module) != 0).sum(1).to(spikes.dtype)  # [K, C_in]
    return float(spikes.sum()) * module.out_channels, float((spikes * fan_out).sum())


@torch.no_grad()
def sparse_conv_macs(module: nn.Module, inp, out) -> tuple[int, int]:
    """(dense, effective) MACs: pairs x C_in x C_out, and the same skipping zero weights per offset."""
    return _macs(module, pair_mask(module, inp, out))


@torch.no_grad()
def sparse_conv_sops(module: nn.Module, inp, out) -> tuple[float, float]:
    """(dense-weight, effective) synaptic operations of a sparse conv whose input features are spikes.

    ``S[k, c]`` = spikes of channel ``c`` summed over the input sites paired at offset ``k``; each
    reaches ``C_out`` neurons (dense) or the ``C_out`` with a nonzero weight (effective).
    """
    return _sops(module, inp, pair_mask(module, inp, out))


def paper_flops(macs: float, out_sites: int) -> float:
    """E-3DSNN's FLOPs of a sparse conv with ``macs`` = pairs x C_in x C_out: 2 x macs - N_out."""
    return 2 * macs - out_sites


@torch.no_grad()
def sparse_conv_counts(module: nn.Module, inp, out, spikes: bool) -> tuple[float, float, float, float]:
    """(dense, effective, dense FLOPs, effective FLOPs) of one call, the pair mask built once.

    The first two are MACs, or SOPs when ``spikes``. The FLOPs are the same operations in E-3DSNN's
    convention: the layer's MACs M become ``paper_flops(M, N_out)`` = 2M - N_out exactly, and any other
    count c of the layer (SOPs, effective MACs) scales with it, c x (2 - N_out / M) (the paper's SOPs
    are firing rate x FLOPs)."""
    mask = pair_mask(module, inp, out)
    macs, effective_macs = _macs(module, mask)
    dense, effective = _sops(module, inp, mask) if spikes else (macs, effective_macs)
    out_sites = int(out.indices.shape[0])
    if not macs:
        return dense, effective, 0.0, 0.0
    return dense, effective, 2 * dense - out_sites * (dense / macs), 2 * effective - out_sites * (effective / macs)
