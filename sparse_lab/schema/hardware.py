"""Schemas of ``configs/hardware/*.yaml``: one class per target (``registered_as`` = its ``name:``).

Prices have no built-in value: every target's config gives them with their source."""

from __future__ import annotations

from sparse_lab.schema.fields import Choice, Float, Schema


class Target(Schema):
    """HardwareTarget's keys: what one operation costs (picojoules)."""

    energy_pj_per_mac = Float(ge=0, required=True)
    energy_pj_per_sop = Float(ge=0, required=True)


class Cpu(Target):
    registered_as = "cpu"
    owner = "hardware target 'cpu'"


class Cuda(Target):
    registered_as = "cuda"
    owner = "hardware target 'cuda'"


class Ideal(Target):
    registered_as = "ideal"
    owner = "hardware target 'ideal'"


class Ampere2to4(Target):
    registered_as = "ampere_2to4"
    owner = "hardware target 'ampere_2to4'"


class EdgeXnnpack(Target):
    registered_as = "edge_xnnpack"
    owner = "hardware target 'edge_xnnpack'"
    min_sparsity = Float(ge=0, le=1, required=True)


class Neuromorphic(Target):
    registered_as = "neuromorphic"
    owner = "hardware target 'neuromorphic'"
    op_count = Choice("macs", "paper_flops")  # measure.sops.OP_COUNTS


class TargetPlugin(Schema):
    """A target of your own (``_target_``): the prices are checked when given (a HardwareTarget needs them)."""

    open = True
    energy_pj_per_mac = Float(ge=0)
    energy_pj_per_sop = Float(ge=0)


TARGETS = [Cpu, Cuda, Ideal, Ampere2to4, EdgeXnnpack, Neuromorphic]
