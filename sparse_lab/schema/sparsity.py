"""Schemas of ``configs/sparsity/*.yaml``: one class per method (``registered_as`` = its ``name:``).

A method's keys are its constructor's arguments (tests/test_schema.py checks them against the
signatures). ``warnings`` name the legal values that make a method prune nothing.
"""

from __future__ import annotations

from sparse_lab.schema.fields import Bool, Choice, Float, Int, List, Regex, Schema, SchemaError

DISTRIBUTIONS = ("uniform", "er", "erk")


class Masked(Schema):
    """The project's prunable-parameter rule: every method takes these."""

    prune_first_layer = Bool()
    prune_classifier = Bool()
    exclude = List(Regex())


class Budget(Masked):
    """Methods that reach a fraction of zeros with a layer-wise distribution (SparsityMethod's keys)."""

    sparsity = Float(ge=0, lt=1)
    distribution = Choice(*DISTRIBUTIONS)

    @classmethod
    def warnings(cls, values, at):
        if values.get("sparsity") == 0:
            return [
                f"{at('sparsity')}=0 makes {cls.registered_as} prune nothing (every weight stays dense); "
                "sparsity=dense is the dense baseline"
            ]
        return []


class Dense(Masked):
    registered_as = "dense"
    owner = "sparsity method 'dense'"


class Random(Budget):
    registered_as = "random"
    owner = "sparsity method 'random'"


class GMP(Budget):
    registered_as = "gmp"
    owner = "sparsity method 'gmp'"
    initial_sparsity = Float(ge=0, lt=1)
    start = Float(ge=0, le=1)
    end = Float(ge=0, le=1)
    frequency = Int(ge=1)
    pointwise_only = Bool()

    @classmethod
    def check(cls, values, at):
        final, initial = values.get("sparsity", 0.8), values.get("initial_sparsity", 0.0)
        if initial > final:
            raise SchemaError(f"{at('initial_sparsity')} must be <= {at('sparsity')} ({final:g}), got {initial:g}")
        start, end = values.get("start", 0.1), values.get("end", 0.7)
        if end < start:
            raise SchemaError(f"{at('end')} must be >= {at('start')} ({start:g}), got {end:g}")


class Lottery(Masked):
    registered_as = "lottery"
    owner = "sparsity method 'lottery'"
    rounds = Int(ge=0)
    prune_rate = Float(ge=0, lt=1)
    scope = Choice("global", "layerwise")
    rewind_step = Int(ge=0)
    reinit = Bool()
    reinit_seed = Int(ge=0, le=2**32 - 1)
    classifier_rate_factor = Float(ge=0, le=1)

    @classmethod
    def warnings(cls, values, at):
        if values.get("rounds") == 0:
            return [f"{at('rounds')}=0: lottery trains the dense network once and prunes nothing"]
        if values.get("prune_rate") == 0:
            return [f"{at('prune_rate')}=0: lottery's rounds prune nothing (every weight stays dense)"]
        return []


class MaskSparsity(Masked):
    registered_as = "masksparsity"
    owner = "sparsity method 'masksparsity'"
    ratio = Float(ge=0, lt=1)
    target = Choice("flops", "channels")
    lam = Float(ge=0)
    warmup_fraction = Float(ge=0, lt=1)
    min_channels = Int(ge=1)
    round_to = Int(ge=1)
    selection = Choice("masksparsity", "slimming")
    threshold = Float(ge=0)

    @classmethod
    def warnings(cls, values, at):
        if values.get("ratio") == 0:
            return [f"{at('ratio')}=0: masksparsity removes no channel"]
        return []


class NM(Masked):
    registered_as = "nm"
    owner = "sparsity method 'nm'"
    n = Int(ge=1)
    m = Int(ge=1)
    sr_ste = Bool()
    sr_ste_lambda = Float(ge=0)
    ramp_fraction = Float(ge=0, le=1)

    @classmethod
    def check(cls, values, at):
        n, m = values.get("n", 2), values.get("m", 4)
        if n > m:
            raise SchemaError(f"{at('n')} must be <= {at('m')} (N of every M weights are kept), got n={n}, m={m}")

    @classmethod
    def warnings(cls, values, at):
        n, m = values.get("n", 2), values.get("m", 4)
        if n == m:
            return [f"{at('n')}={n} = {at('m')}: N:M keeps every weight (no sparsity); use n < m"]
        return []


class Dynamic(Budget):
    """RigL, SET and DSL: a fixed budget with periodic drop-and-grow (sparse_lab/sparsity/dynamic.py)."""

    delta_t = Int(ge=1)
    alpha = Float(ge=0, le=1)
    final_alpha = Float(ge=0, le=1)
    alpha_schedule = Choice("cosine", "constant")
    end_fraction = Float(ge=0, le=1)

    @classmethod
    def check(cls, values, at):
        alpha, final = values.get("alpha"), values.get("final_alpha")
        if alpha is not None and final is not None and final > alpha:
            raise SchemaError(f"{at('final_alpha')} must be <= {at('alpha')} ({alpha:g}), got {final:g}")

    @classmethod
    def warnings(cls, values, at):
        found = super().warnings(values, at)
        if not found and (values.get("alpha") == 0 or values.get("end_fraction") == 0):
            key = "alpha" if values.get("alpha") == 0 else "end_fraction"
            found.append(f"{at(key)}=0: {cls.registered_as} never updates its masks (a fixed random mask)")
        return found


class RigL(Dynamic):
    registered_as = "rigl"
    owner = "sparsity method 'rigl'"


class SET(Dynamic):
    registered_as = "set"
    owner = "sparsity method 'set'"


class DSL(Dynamic):
    registered_as = "dsl"
    owner = "sparsity method 'dsl'"


class SparsityPlugin(Budget):
    """A method of your own (``_target_``): SparsityMethod's keys are checked when given, the rest are yours."""

    open = True

    @classmethod
    def warnings(cls, values, at):
        return []


METHODS = [Dense, Random, GMP, Lottery, MaskSparsity, NM, RigL, SET, DSL]
