import math

import pytest

from sparse_lab.sparsity.distributions import layer_densities


def test_uniform_gives_every_layer_the_global_density():
    assert layer_densities([(10, 5), (4, 10, 3, 3)], 0.3, "uniform") == [0.3, 0.3]


def test_er_by_hand():
    # Linear 20x10 (200 weights) and 10x5 (50): raw ER scores (10+20)/200 = 0.15 and (5+10)/50 = 0.3.
    # Budget 0.5 * 250 = 125 = eps * (0.15*200 + 0.3*50) = eps * 45 -> eps = 125/45.
    d1, d2 = layer_densities([(20, 10), (10, 5)], 0.5, "er")
    eps = 125 / 45
    assert d1 == pytest.approx(0.15 * eps)  # 0.4167
    assert d2 == pytest.approx(0.3 * eps) and d2 < 1  # 0.8333
    assert d1 * 200 + d2 * 50 == pytest.approx(125)


def test_erk_adds_kernel_terms_and_densifies_overflowing_layers():
    # conv [8, 4, 3, 3] (288 weights): (8+4+3+3)/288 = 0.0625; linear [100, 200] (20000): 300/20000 = 0.015;
    # linear [2, 8] (16): 10/16 = 0.625. At density 0.1 only the small layer overflows:
    shapes = [(8, 4, 3, 3), (100, 200), (2, 8)]
    sizes = [288, 20000, 16]
    budget = 0.1 * sum(sizes)
    eps_first = budget / (0.0625 * 288 + 0.015 * 20000 + 0.625 * 16)
    assert 0.625 * eps_first > 1  # would overflow -> dense, and the solve repeats without it
    eps = (budget - 16) / (0.0625 * 288 + 0.015 * 20000)
    densities = layer_densities(shapes, 0.1, "erk")
    assert densities[2] == 1.0
    assert densities[0] == pytest.approx(0.0625 * eps)
    assert densities[1] == pytest.approx(0.015 * eps)
    assert sum(d * n for d, n in zip(densities, sizes)) == pytest.approx(budget)


def test_erk_densification_cascades_until_nothing_overflows():
    shapes = [(4, 4), (6, 4), (1000, 1000)]
    densities = layer_densities(shapes, 0.5, "erk")
    assert densities[:2] == [1.0, 1.0]
    assert all(d <= 1 for d in densities)
    total = sum(math.prod(s) for s in shapes)
    assert sum(d * math.prod(s) for d, s in zip(densities, shapes)) == pytest.approx(0.5 * total)
