"""Where ``magiceraser evaluate`` keeps things under ``out_dir`` (one place, so every part agrees).

Table labels may hold spaces and dots ("i. Baseline + OLRD"); their folders are
:func:`magiceraser.keys.file_name_key` of the label.
"""

from __future__ import annotations

from pathlib import Path

from magiceraser.keys import file_name_key

MANIFEST = "manifest.json"  # per pairs folder, written last: what the pairs were built from
STAMP = "method.json"  # per method folder: the method deps and metric settings of the last run
PAIR_FILES = ("input.png", "mask.png", "target.png")  # per pair folder; target.png absent: no ground truth
PAIR_META = "meta.json"  # per pair folder: source, object class, sizes


def pairs_dir(out: Path, ds: str) -> Path:
    """``pairs/<dataset>/``: the letterboxed pairs of one dataset."""
    return out / "pairs" / file_name_key(ds)


def method_dir(out: Path, ds: str, method: str) -> Path:
    """``methods/<dataset>/<method>/``: one method's erased images, records and FID features."""
    return out / "methods" / file_name_key(ds) / file_name_key(method)


def target_path(root: Path, key: str) -> Path:
    """The stored ground truth of pair ``key`` under a dataset's pairs folder (absent when it has none)."""
    return root / key / PAIR_FILES[2]
