"""SCTN: Sparse Convolution-Transformer Network for scene flow (Li et al., AAAI 2022).

Pipeline, per pair of point clouds (pc1, pc2) [B, N, 3]:

1. Voxelise both clouds (``voxel_size``; a voxel's input feature is the mean offset of its points
   inside it, plus a constant) and run one sparse-convolution U-Net (spconv: ``SubMConv3d``,
   strided ``SparseConv3d`` down, ``SparseInverseConv3d`` up, skip concatenations) over both frames
   as one batch, so the two frames share weights.
2. Interpolate voxel features back to the points: inverse-distance weights over the ``interp_k``
   nearest voxel centroids of the same cloud.
3. Point-transformer block for global relations: multi-head self-attention over all points of a
   cloud with a learned positional encoding; its output is added to the features (SCTN's fusion).
4. Soft correspondence by entropic optimal transport (Sinkhorn, FLOT's unbalanced form with learned
   ε and γ) between the two frames' features; the initial flow of a pc1 point is the plan-weighted
   mean of pc2 minus the point.
5. Refinement of that flow with three set convolutions on pc1's kNN graph (FLOT/SCTN), residual.

Loss terms beyond the task's L1 flow loss (:meth:`SCTN.auxiliary_losses`): the feature-similarity
flow consistency, weight 0.3 after ``consistency_warmup_epochs``: for pc1's ``consistency_k`` nearest
neighbours j of each point i, ``w_ij = exp(-(1 - cos(F_i, F_j)) / τ)`` (τ = 0.45), and the loss is
``mean_i Σ_j w_ij ‖f_i − f_j‖₁ / Σ_j w_ij``. *Ours*: the exact weight kernel and detaching the
features inside it (so the term smooths the flow and cannot be lowered by pushing features apart).
*Ours*, small preset only: ``init_flow_weight`` x L1 on the transport's initial flow as well (direct
supervision of the matching, which a few CPU minutes of training need; the paper preset has it off).

Every sparse convolution has ``bias=False`` (BatchNorm follows each; spconv's CPU eval path has no
fused bias). The model declares its stem ``SubMConv3d`` and the refinement's output ``Linear`` as the
layers the prunable rule keeps dense (``input_layer_names`` / ``output_layer_names``).
"""

from __future__ import annotations

import spconv.pytorch as sp
import torch
import torch.nn.functional as F
from torch import nn

from sparse_lab.errors import UserError
from sparse_lab.models import MODELS
from sparse_lab.models.presets import resolve_preset
from sparse_lab.protocols import ChannelGroup
from sparse_lab.spconv_compat import spconv  # noqa: F401  (applies the CPU fixes)
from sparse_lab.surgery import Consumer, ConvBN, bn_chain_group

PRESETS = {
    # Smoke tests: the small preset at half width, one Sinkhorn iteration, fewer neighbours.
    "tiny": dict(
        channels=(8, 8, 8),
        voxel_size=0.3,
        interp_k=3,
        num_heads=1,
        graph_k=4,
        refine_width=8,
        nb_iter=1,
        consistency_k=4,
        max_distance=1.5,
        init_flow_weight=0.5,
    ),
    # 2 CPU cores, flow3d (1024 points per frame, scenes about 6 x 6 x 2 m).
    # Voxels of 0.3 m hold several points of a 512-point frame, so both frames see the same occupancy
    # (at 0.1 m most voxels hold one point and matching did not learn in our trials). max_distance 1.5 m:
    # flow3d's largest motions are about 1.2 m.
    "small": dict(
        channels=(16, 32, 32),
        voxel_size=0.3,
        interp_k=3,
        num_heads=2,
        graph_k=8,
        refine_width=16,
        nb_iter=3,
        consistency_k=8,
        max_distance=1.5,
        init_flow_weight=0.5,
    ),
    # The paper's geometry (FlyingThings3D / KITTI, 8192 points): U-Net 64/128/128, voxel 0.07 m, 32 neighbours.
    "paper": dict(
        channels=(64, 128, 128),
        voxel_size=0.07,
        interp_k=32,
        num_heads=4,
        graph_k=32,
        refine_width=32,
        nb_iter=1,
        consistency_k=32,
        max_distance=10.0,
        init_flow_weight=0.0,
    ),
}


# -- point-set helpers ------------------------------------------------------------------------------
def knn(query: torch.Tensor, ref: torch.Tensor, k: int, ref_valid: torch.Tensor | None = None):
    """Distances and indices [B, N, k] of the k nearest ``ref`` points [B, M, 3] to each ``query`` point."""
    dist = torch.cdist(query, ref)
    if ref_valid is not None:
        dist = dist.masked_fill(~ref_valid[:, None, :], float("inf"))
    return dist.topk(min(k, ref.shape[1]), dim=-1, largest=False)


def gather(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``values`` [B, M, C] at ``idx`` [B, N, k] -> [B, N, k, C]."""
    batch = torch.arange(values.shape[0], device=values.device).view(-1, 1, 1)
    return values[batch, idx]


def sinkhorn(
    feats1: torch.Tensor,
    feats2: torch.Tensor,
    pc1: torch.Tensor,
    pc2: torch.Tensor,
    epsilon: torch.Tensor | float,
    gamma: torch.Tensor | float | None,
    nb_iter: int,
    max_distance: float = 10.0,
) -> torch.Tensor:
    """Transport plan [B, N, M] between two point sets (FLOT, Puy et al. 2020; used by SCTN).

    Cost ``1 - cos(F1_i, F2_j)``; kernel ``exp(-C / ε)``, zero for pairs more than ``max_distance``
    metres apart; uniform marginals 1/N and 1/M; ``nb_iter`` Sinkhorn iterations with the unbalanced
    (KL-relaxed) update exponent ``γ / (γ + ε)`` (``gamma=None``: balanced, exponent 1). The last
    update is on the rows, so in the balanced case row sums are exactly 1/N.
    """
    sq = (pc1**2).sum(-1, keepdim=True) + (pc2**2).sum(-1, keepdim=True).transpose(1, 2) - 2 * pc1 @ pc2.transpose(1, 2)
    support = (sq < max_distance**2).to(feats1.dtype)
    f1 = feats1 / torch.sqrt((feats1**2).sum(-1, keepdim=True) + 1e-8)
    f2 = feats2 / torch.sqrt((feats2**2).sum(-1, keepdim=True) + 1e-8)
    cost = 1.0 - f1 @ f2.transpose(1, 2)
    kernel = torch.exp(-cost / epsilon) * support
    power = 1.0 if gamma is None else gamma / (gamma + epsilon)
    b, n, m = kernel.shape
    prob1 = torch.full((b, n, 1), 1.0 / n, dtype=kernel.dtype, device=kernel.device)
    prob2 = torch.full((b, m, 1), 1.0 / m, dtype=kernel.dtype, device=kernel.device)
    a = prob1
    for _ in range(nb_iter):
        col = torch.pow(prob2 / (kernel.transpose(1, 2) @ a + 1e-8), power)
        a = torch.pow(prob1 / (kernel @ col + 1e-8), power)
    if nb_iter == 0:
        return kernel
    return a * kernel * col.transpose(1, 2)


def transport_flow(plan: torch.Tensor, pc1: torch.Tensor, pc2: torch.Tensor) -> torch.Tensor:
    """Each pc1 point moves to the plan-weighted mean of pc2: flow [B, N, 3]."""
    return (plan @ pc2) / (plan.sum(-1, keepdim=True) + 1e-8) - pc1


# -- modules ---------------------------------------------------------------------------------------
def _sparse_block(c_in: int, c_out: int, conv) -> sp.SparseSequential:
    return sp.SparseSequential(conv, nn.BatchNorm1d(c_out), nn.ReLU())


class SparseUNet(nn.Module):
    """Three-level sparse U-Net: SubM convs at each level, stride-2 sparse convs down, inverse convs up."""

    def __init__(self, c_in: int, channels: tuple[int, int, int]):
        super().__init__()
        c1, c2, c3 = channels
        self.enc1 = sp.SparseSequential(
            _sparse_block(c_in, c1, sp.SubMConv3d(c_in, c1, 3, padding=1, bias=False, indice_key="subm1")),
            _sparse_block(c1, c1, sp.SubMConv3d(c1, c1, 3, padding=1, bias=False, indice_key="subm1")),
        )
        self.enc2 = sp.SparseSequential(
            _sparse_block(c1, c2, sp.SparseConv3d(c1, c2, 3, stride=2, padding=1, bias=False, indice_key="down1")),
            _sparse_block(c2, c2, sp.SubMConv3d(c2, c2, 3, padding=1, bias=False, indice_key="subm2")),
        )
        self.enc3 = sp.SparseSequential(
            _sparse_block(c2, c3, sp.SparseConv3d(c2, c3, 3, stride=2, padding=1, bias=False, indice_key="down2")),
            _sparse_block(c3, c3, sp.SubMConv3d(c3, c3, 3, padding=1, bias=False, indice_key="subm3")),
        )
        self.up2 = _sparse_block(c3, c2, sp.SparseInverseConv3d(c3, c2, 3, indice_key="down2", bias=False))
        self.dec2 = _sparse_block(2 * c2, c2, sp.SubMConv3d(2 * c2, c2, 3, padding=1, bias=False, indice_key="subm2"))
        self.up1 = _sparse_block(c2, c1, sp.SparseInverseConv3d(c2, c1, 3, indice_key="down1", bias=False))
        # The output block has no ReLU: signed, zero-centred features spread the cosine costs of the matching.
        self.dec1 = sp.SparseSequential(
            sp.SubMConv3d(2 * c1, c1, 3, padding=1, bias=False, indice_key="subm1"), nn.BatchNorm1d(c1)
        )

    def forward(self, x: sp.SparseConvTensor) -> torch.Tensor:
        x1 = self.enc1(x)
        x2 = self.enc2(x1)
        x3 = self.enc3(x2)
        u2 = self.up2(x3)  # same sites, same order as x2
        u2 = self.dec2(u2.replace_feature(torch.cat([u2.features, x2.features], 1)))
        u1 = self.up1(u2)  # same sites, same order as x1
        u1 = self.dec1(u1.replace_feature(torch.cat([u1.features, x1.features], 1)))
        return u1.features

    # (producer block, consumer block): channels that feed only the consumer. A consumer after an up block
    # reads a concatenation whose first channels are the up block's. enc1.1 and enc2.1 (x1, x2) also feed a
    # skip concatenation, and dec1 is the output: their channels stay.
    FREE_CHAINS = (
        ("enc1.0", "enc1.1"),
        ("enc2.0", "enc2.1"),
        ("enc3.0", "enc3.1"),
        ("enc3.1", "up2"),
        ("up2", "dec2"),
        ("dec2", "up1"),
        ("up1", "dec1"),
    )

    def channel_groups(self, prefix: str, add_gates: bool) -> list[ChannelGroup]:
        """The U-Net's free BN chains (``protocols.ChannelGroups``), scaled by the producer's BN γ. Every
        consumer is a 3x3x3 sparse conv (SubM, strided or inverse), whose response to a constant depends on
        the active neighbours of each site: nothing can be folded, and removal is exact when the removed
        channels' ReLU(β) is 0 (β ≤ 0)."""
        groups = []
        for producer, consumer in self.FREE_CHAINS:
            block, reader = self.get_submodule(producer), self.get_submodule(consumer)
            groups.append(
                bn_chain_group(
                    f"{prefix}{producer}",
                    ConvBN(f"{prefix}{producer}.0", block[0], block[1]),
                    block[2],
                    Consumer(f"{prefix}{consumer}.0", reader[0], bn=reader[1]),
                )
            )
        return groups


class PointTransformer(nn.Module):
    """Global self-attention over a cloud's points with a learned positional encoding (residual)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise UserError(f"sctn: feature width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.pos = nn.Sequential(nn.Linear(3, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """``xyz`` [..., N, 3], ``feats`` [..., N, D]: attention within each cloud (leading dims are clouds)."""
        *lead, n, d = feats.shape
        h = self.norm(feats + self.pos(xyz - xyz.mean(-2, keepdim=True)))
        qkv = self.qkv(h).reshape(-1, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(*lead, n, d)
        return feats + self.proj(out)


class OptimalTransport(nn.Module):
    """Sinkhorn with learned entropic (ε) and mass (γ) regularisation, as in SCTN's reference code."""

    def __init__(self, nb_iter: int, max_distance: float = 10.0):
        super().__init__()
        self.nb_iter, self.max_distance = int(nb_iter), float(max_distance)
        self.log_epsilon = nn.Parameter(torch.tensor(-5.0))  # ε = exp(-5) + 0.025 at init
        self.log_gamma = nn.Parameter(torch.zeros(()))  # γ = 1 at init

    def forward(self, feats1, feats2, pc1, pc2) -> torch.Tensor:
        epsilon = torch.exp(self.log_epsilon) + 0.025
        return sinkhorn(feats1, feats2, pc1, pc2, epsilon, torch.exp(self.log_gamma), self.nb_iter, self.max_distance)


class InstanceNorm(nn.Module):
    """Per-sample, per-channel normalisation over points and neighbours (FLOT's InstanceNorm2d), channel-last."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.ndim - 1))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class SetConv(nn.Module):
    """FLOT's set convolution: an MLP on (neighbour signal, relative position), max over neighbours, MLP."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.fc1, self.norm1 = nn.Linear(c_in + 3, c_out, bias=False), InstanceNorm(c_out)
        self.fc2, self.norm2 = nn.Linear(c_out, c_out, bias=False), InstanceNorm(c_out)
        self.fc3, self.norm3 = nn.Linear(c_out, c_out, bias=False), InstanceNorm(c_out)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, signal: torch.Tensor, idx: torch.Tensor, rel_pos: torch.Tensor) -> torch.Tensor:
        x = torch.cat([gather(signal, idx), rel_pos], -1)  # [B, N, k, C + 3]
        x = self.act(self.norm1(self.fc1(x))).max(2).values
        x = self.act(self.norm2(self.fc2(x)))
        return self.act(self.norm3(self.fc3(x)))


class SCTN(nn.Module):
    input_modality = "point_cloud_pair"
    input_layer_names = ("unet.enc1.0.0",)  # protocols.DenseLayers: the stem conv and the flow output layer
    output_layer_names = ("fc",)

    def __init__(
        self,
        channels: tuple[int, int, int] = (32, 64, 64),
        voxel_size: float = 0.15,
        interp_k: int = 3,
        num_heads: int = 2,
        graph_k: int = 16,
        refine_width: int = 16,
        nb_iter: int = 3,
        max_distance: float = 10.0,
        init_flow_weight: float = 0.0,
        consistency_weight: float = 0.3,
        consistency_tau: float = 0.45,
        consistency_k: int = 16,
        consistency_warmup_epochs: int = 2,
    ):
        super().__init__()
        if len(channels) != 3 or min(channels) < 1:
            raise UserError(f"sctn: channels must be three positive widths, got {list(channels)}")
        if float(voxel_size) <= 0:
            raise UserError(f"sctn: voxel_size must be positive, got {voxel_size}")
        self.voxel_size = float(voxel_size)
        self.interp_k, self.graph_k = int(interp_k), int(graph_k)
        self.consistency_weight, self.consistency_tau = float(consistency_weight), float(consistency_tau)
        self.consistency_k, self.consistency_warmup_epochs = int(consistency_k), int(consistency_warmup_epochs)
        dim = channels[0]
        self.unet = SparseUNet(4, tuple(int(c) for c in channels))
        self.transformer = PointTransformer(dim, int(num_heads))
        self.transport = OptimalTransport(nb_iter, max_distance)
        self.init_flow_weight = float(init_flow_weight)
        n = int(refine_width)
        self.refine1, self.refine2, self.refine3 = SetConv(3, n), SetConv(n, 2 * n), SetConv(2 * n, 4 * n)
        self.fc = nn.Linear(4 * n, 3)  # the last weight layer: flow residual

    # -- voxel features -> point features --------------------------------------------------------
    def point_features(self, clouds: torch.Tensor) -> torch.Tensor:
        """Per-point features [C, N, D] of ``clouds`` [C, N, 3] (C clouds: both frames of every pair)."""
        c, n, _ = clouds.shape
        with torch.no_grad():
            origin = clouds.amin(1, keepdim=True)
            grid = torch.floor((clouds - origin) / self.voxel_size).long()  # [C, N, 3]
            shape = (grid.amax((0, 1)) + 1).tolist()
            cloud_id = torch.arange(c, device=clouds.device).view(c, 1).expand(c, n)
            key = ((cloud_id * shape[0] + grid[..., 0]) * shape[1] + grid[..., 1]) * shape[2] + grid[..., 2]
            sites, inverse = torch.unique(key.reshape(-1), return_inverse=True)
            coords = torch.stack(
                [
                    sites // (shape[0] * shape[1] * shape[2]),
                    sites // (shape[1] * shape[2]) % shape[0],
                    sites // shape[2] % shape[1],
                    sites % shape[2],
                ],
                1,
            ).int()
        m = len(sites)
        flat = clouds.reshape(-1, 3)
        count = torch.zeros(m, 1, dtype=clouds.dtype, device=clouds.device).index_add_(
            0, inverse, torch.ones_like(flat[:, :1])
        )
        centroid = torch.zeros(m, 3, dtype=clouds.dtype, device=clouds.device).index_add_(0, inverse, flat) / count
        offset = (
            (centroid - origin.reshape(c, 3)[coords[:, 0].long()]) / self.voxel_size
            - coords[:, 1:].to(clouds.dtype)
            - 0.5
        )
        x = sp.SparseConvTensor(torch.cat([offset, torch.ones_like(count)], 1), coords, shape, c)
        voxel_feats = self.unet(x)  # [M, D]

        # Pad each cloud's voxels to [C, Mmax] and interpolate (inverse distance over interp_k centroids).
        cloud_of_site = coords[:, 0].long()
        per_cloud = torch.bincount(cloud_of_site, minlength=c)
        start = torch.cumsum(per_cloud, 0) - per_cloud
        slot = torch.arange(m, device=clouds.device) - start[cloud_of_site]
        m_max = int(per_cloud.max())
        padded_xyz = clouds.new_zeros(c, m_max, 3)
        padded_feats = voxel_feats.new_zeros(c, m_max, voxel_feats.shape[1])
        valid = torch.zeros(c, m_max, dtype=torch.bool, device=clouds.device)
        padded_xyz[cloud_of_site, slot] = centroid
        padded_feats[cloud_of_site, slot] = voxel_feats
        valid[cloud_of_site, slot] = True
        dist, idx = knn(clouds, padded_xyz, self.interp_k, valid)
        weight = 1.0 / (dist + 1e-8)
        weight = weight / weight.sum(-1, keepdim=True)
        return (gather(padded_feats, idx) * weight.unsqueeze(-1)).sum(2)

    def refine(self, flow: torch.Tensor, idx: torch.Tensor, rel_pos: torch.Tensor) -> torch.Tensor:
        x = self.refine1(flow, idx, rel_pos)
        x = self.refine2(x, idx, rel_pos)
        x = self.refine3(x, idx, rel_pos)
        return flow + self.fc(x)

    def forward(self, inputs: dict) -> dict:
        pc1, pc2 = inputs["pc1"], inputs["pc2"]
        b = pc1.shape[0]
        clouds = torch.cat([pc1, pc2], 0)
        feats = self.point_features(clouds)
        # [B, 2, N, D]: a sample's two frames together, so per-sample MAC counts see both.
        feats = self.transformer(torch.stack([pc1, pc2], 1), torch.stack([feats[:b], feats[b:]], 1))
        feats1, feats2 = feats[:, 0], feats[:, 1]
        plan = self.transport(feats1, feats2, pc1, pc2)
        flow_init = transport_flow(plan, pc1, pc2)
        with torch.no_grad():
            _, idx = knn(pc1, pc1, self.graph_k)
        rel_pos = gather(pc1, idx) - pc1.unsqueeze(2)
        flow = self.refine(flow_init, idx, rel_pos)
        return {"flow": flow, "flow_init": flow_init, "features": feats1, "pc1": pc1, "neighbors": idx}

    def auxiliary_losses(self, output: dict, target: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """Weighted terms next to the task's L1 flow loss: SCTN's feature-similarity flow consistency (zero
        during the warm-up epochs) and, if ``init_flow_weight`` > 0, L1 on the transport's initial flow."""
        flow = output["flow"]
        terms = {}
        if self.init_flow_weight > 0:
            terms["flow_init"] = self.init_flow_weight * (output["flow_init"] - target).abs().sum(-1).mean()
        if self.consistency_weight == 0 or epoch < self.consistency_warmup_epochs:
            terms["consistency"] = flow.new_zeros(())
        else:
            terms["consistency"] = self.consistency_weight * flow_consistency(
                flow,
                output["features"],
                output["pc1"],
                self.consistency_k,
                self.consistency_tau,
                output["neighbors"] if self.consistency_k == self.graph_k else None,
            )
        return terms


def flow_consistency(flow, feats, xyz, k: int, tau: float, neighbors: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_i Σ_j w_ij ‖f_i − f_j‖₁ / Σ_j w_ij`` over the k nearest neighbours j of i, with
    ``w_ij = exp(-(1 - cos(F_i, F_j)) / τ)`` on detached features."""
    if neighbors is None:
        with torch.no_grad():
            _, neighbors = knn(xyz, xyz, k)
    with torch.no_grad():
        unit = F.normalize(feats.detach(), dim=-1)
        cos = (gather(unit, neighbors) * unit.unsqueeze(2)).sum(-1)
        weight = torch.exp(-(1.0 - cos) / tau)
    diff = (gather(flow, neighbors) - flow.unsqueeze(2)).abs().sum(-1)
    return ((weight * diff).sum(-1) / weight.sum(-1)).mean()


@MODELS.register("sctn")
def sctn(preset: str | None = "small", num_points: int | None = None, num_classes: int | None = None, **kwargs) -> SCTN:
    """``num_points`` / ``num_classes`` come from the data and do not change the network."""
    geometry = resolve_preset(PRESETS, preset, kwargs)
    if "channels" in geometry:
        geometry["channels"] = tuple(geometry["channels"])
    return SCTN(**geometry)


sctn.input_modality = "point_cloud_pair"
sctn.default_data = "flow3d"
