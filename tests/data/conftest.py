import pytest

from sparse_lab.data import shapes3d


@pytest.fixture(autouse=True)
def fresh_generated_splits(monkeypatch):
    """Each data test generates its splits itself: the per-process cache of shapes3d starts empty and is
    put back afterwards, so no test sees clouds another one generated (or changed)."""
    monkeypatch.setattr(shapes3d, "_SPLITS", {})
