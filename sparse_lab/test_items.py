"""Per-item test results: what a comparison needs to count the test set's own sampling error.

A run's accuracy is measured on one finite test set, and two methods compared on it share it: the spread
over seeds says nothing about how far their difference would move on other test images (on 269 images,
one image is 0.37 points). The classification task records, for every test item in loader order, whether
it was classified right (``values``) and its label (``key``); the datamodule may add which items fail
together (``groups``: e.g. renderings of one source digit, ``protocols.TestItemGroups``). They are written
next to results.json as test_items.npz (numpy arrays, no pickle), by a one-process run; two runs are
paired item by item only when their fingerprints agree (the same items, in the same order and groups).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

FILE = "test_items.npz"


def fingerprint(key: np.ndarray, groups: np.ndarray) -> str:
    digest = hashlib.sha1(np.ascontiguousarray(key).tobytes())
    digest.update(np.ascontiguousarray(groups).tobytes())
    return digest.hexdigest()[:16]


def save(run_dir: Path, metric: str, values, key, groups=None) -> dict:
    """Write the items (``groups`` None: every item its own); return what results.json records of them."""
    from sparse_lab.safe_io import atomic_write  # torch is imported there: not needed to read the items

    values, key = np.asarray(values), np.asarray(key)
    groups = np.arange(len(values)) if groups is None else np.asarray(groups, dtype=np.int64)
    if not len(values) == len(key) == len(groups):
        raise ValueError(f"test items: {len(values)} values, {len(key)} keys, {len(groups)} groups")
    atomic_write(run_dir / FILE, lambda f: np.savez(f, values=values, key=key, groups=groups))
    return {
        "file": FILE,
        "metric": metric,
        "n": len(values),
        "groups": len(np.unique(groups)),
        "fingerprint": fingerprint(key, groups),
    }


def load(run_dir: Path, record: dict | None, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-item values of ``metric`` recorded for a run and the items' groups, or None (none recorded,
    another metric, or a file that does not match its record)."""
    if not isinstance(record, dict) or record.get("metric") != metric:
        return None
    try:
        with np.load(run_dir / str(record.get("file", FILE)), allow_pickle=False) as data:
            values, key, groups = data["values"], data["key"], data["groups"]
    except (OSError, ValueError, KeyError):
        return None
    if len(values) != record.get("n") or fingerprint(key, groups) != record.get("fingerprint"):
        return None
    return values.astype(np.float64), groups
