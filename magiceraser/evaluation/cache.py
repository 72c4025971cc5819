"""Cache keys of ``magiceraser evaluate``: what each cached file depends on.

A resume must never report a stale score, so every cached file records a fingerprint of its
inputs and is recomputed when the fingerprint no longer matches (the pattern of
``magiceraser.datasets.job_state.job_fingerprint``):

    pairs/<dataset>/manifest.json        :func:`pairs_deps`: dataset config, size, a listing of the
                                         source files, :data:`PAIRS_VERSION`
    methods/.../images/<key>.png         :func:`pair_digest` (the bytes of input/mask/target),
                                         :func:`method_deps` (method config, size, diffusion dtype,
                                         per-image prompts file, the trained export's file digests)
                                         and :func:`noise_index`
    methods/.../metrics/<key>.json       the image's key plus, per metric, :func:`metric_keys`
                                         (:data:`SCORE_VERSION`, the metric's models and settings;
                                         the judges also the pair's object class)
    methods/.../inception_{real,fake}.npz  :func:`files_digest` of the scored images + Inception weights

Keying results on the pair's *content* rather than on the dataset config means a rebuild that
yields the same pixels (e.g. ``num_pairs`` raised) keeps every still-valid result.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magiceraser.config import config_to_dict
from magiceraser.evaluation.config import DatasetConfig, MetricsConfig
from magiceraser.evaluation.layout import PAIR_FILES, target_path
from magiceraser.evaluation.methods import MethodConfig
from magiceraser.fingerprint import changed, describe_changes, digest

PAIRS_VERSION = 2  # 2: COCO pair keys from the annotated path; OpenImages pairs carry their class
"""Bump when the pair builders or the letterbox change what a config produces."""
SCORE_VERSION = 1
"""Bump when a metric's implementation changes its values (cached scores are then recomputed)."""

# The judges' settings: the verdict and the number behind it depend on all of them (the threshold only
# changes the verdict, but one key per judge keeps the record's two fields consistent).
_DETECTOR = ("segmenter", "judge_detector_dilation", "judge_detector_threshold")
_VLM = ("judge_vlm_model", "judge_vlm_backend", "judge_vlm_prompt", "judge_vlm_threshold", "judge_vlm_context",
        "judge_vlm_fallback_class")
# metric -> the MetricsConfig fields its value depends on (beyond the images and SCORE_VERSION)
METRIC_DEPS: dict[str, tuple[str, ...]] = {
    "psnr": (), "ssim": (), "psnr_mask": (), "ssim_mask": (),
    "lpips": ("lpips_alexnet_weights",), "lpips_mask": ("lpips_alexnet_weights",),
    "regrowth": ("segmenter",),
    "remove": ("remove_model",),
    "cfd": ("cfd_model", "segmenter"), "cfd_context": ("cfd_model", "segmenter"), "cfd_invented": ("cfd_model", "segmenter"),
    "success_detector": _DETECTOR, "detector_fraction": _DETECTOR,
    "success_vlm": _VLM, "vlm_p_yes": _VLM,
}
# Metrics that also depend on the pair's object class (meta.json), not only on its pixels.
CLASS_METRICS = frozenset({"success_detector", "detector_fraction", "success_vlm", "vlm_p_yes"})
# MethodConfig fields that do not change what the method produces
_NOT_OUTPUT_FIELDS = ("name", "enabled", "optional")


def files_digest(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of ``paths`` in order (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def pair_digest(root: Path, key: str) -> str:
    """What a per-image result depends on from its pair: the stored input, mask and target bytes
    (a pair without a ground truth: its input and mask, marked as having none)."""
    if target_path(root, key).is_file():
        return files_digest(root / key / name for name in PAIR_FILES)
    return digest({"input_mask": files_digest(root / key / name for name in PAIR_FILES[:2]), "target": None})


# ---------------------------------------------------------------- pairs


def _tree_listing(path: str) -> list[list[Any]]:
    """(relative path, size, mtime_ns) of every file under ``path`` (or of ``path`` itself), sorted."""
    if not path:
        return []
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [[p.name, st.st_size, st.st_mtime_ns]]
    out = []
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            st = full.stat()
            out.append([str(full.relative_to(p)), st.st_size, st.st_mtime_ns])
    return out


def source_listing(ds: DatasetConfig) -> str:
    """Digest of the files the dataset's pairs are read from: replaced data under the same path
    (e.g. OLRD shards regenerated into the same folder) rebuilds the pairs."""
    if ds.kind == "olrd_shards":
        from magiceraser.evaluation.pairs.olrd_shards import shard_paths

        listing = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in shard_paths(ds.path)]
    else:
        inputs = (ds.path, ds.panoptic_json, ds.panoptic_dir, ds.masks_csv, ds.masks_dir, ds.class_descriptions)
        listing = [_tree_listing(p) for p in inputs]
    return digest(listing)


def pairs_deps(ds: DatasetConfig, size: int) -> dict[str, Any]:
    """What ``pairs/<dataset>/`` is built from; the manifest records it and a mismatch rebuilds."""
    return {"version": PAIRS_VERSION, "dataset": config_to_dict(ds), "size": size, "source": source_listing(ds)}


# ---------------------------------------------------------------- methods and metrics


def effective_dtype(kind: str, dtype: str, device: str) -> str | None:
    """The diffusion dtype the pipeline will use (its default: float16 on CUDA, float32 elsewhere);
    None for the classical methods, which have no dtype."""
    if kind not in ("sd", "magiceraser"):
        return None
    return dtype or ("float16" if device.startswith("cuda") else "float32")


def method_deps(mcfg: MethodConfig, size: int, dtype: str, device: str) -> dict[str, Any]:
    """What a method's erased images depend on besides the pair (its label and switches do not)."""
    deps = {k: v for k, v in config_to_dict(mcfg).items() if k not in _NOT_OUTPUT_FIELDS}
    deps["size"] = size
    deps["dtype"] = effective_dtype(mcfg.kind, dtype, device)
    if mcfg.prompts:  # the per-image prompts are part of the method: edited captions re-erase
        p = Path(mcfg.prompts)
        deps["prompts_digest"] = files_digest([p]) if p.is_file() else None
    if mcfg.trained_dir and mcfg.kind == "magiceraser":  # a run retrained into the same folder re-erases
        deps["trained_files"] = trained_files(mcfg.trained_dir)
    return deps


def trained_files(trained_dir: str) -> dict[str, str] | None:
    """The sha256 of the export's weight files as its ``magiceraser.json`` records them (content, not the
    folder's name); None where the folder holds no readable export (the method then says why)."""
    import json

    from magiceraser.artifacts import META_NAME

    try:
        files = json.loads((Path(trained_dir) / META_NAME).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return dict(files) if isinstance(files, dict) else None


def noise_index(kind: str, index: int) -> int | None:
    """The pair's position where it picks the diffusion noise (seed + index); None for the
    classical methods, whose output does not depend on it."""
    return index if kind in ("sd", "magiceraser") else None


def metric_settings(cfg: MetricsConfig) -> dict[str, Any]:
    """The settings any metric value depends on (recorded for the log's "changed" line)."""
    fields = sorted({f for deps in METRIC_DEPS.values() for f in deps})
    return {"score_version": SCORE_VERSION, **{f: getattr(cfg, f) for f in fields}}


def metric_keys(cfg: MetricsConfig) -> dict[str, str]:
    """Per metric, the digest of its settings; a cached value with another digest is recomputed."""
    return {m: digest({"version": SCORE_VERSION, **{f: getattr(cfg, f) for f in deps}}) for m, deps in METRIC_DEPS.items()}


@dataclass(frozen=True)
class RecordKey:
    """The cache key a per-image record must carry to be reused."""

    pair: str
    method: str
    index: int | None
    metrics: Mapping[str, str]
    object_class: str | None = None  # the pair's object class (meta.json), which the judges' verdicts depend on

    def as_json(self, metrics_held: Iterable[str]) -> dict[str, Any]:
        """The ``cache`` entry of a record holding ``metrics_held``."""
        held = list(metrics_held)
        entry = {"pair": self.pair, "method": self.method, "index": self.index, "metrics": {m: self.metrics[m] for m in held}}
        if CLASS_METRICS.intersection(held):
            entry["object_class"] = self.object_class
        return entry


@dataclass(frozen=True)
class Reuse:
    """What a cached record still provides under the current key."""

    image: bool  # the erased image (and its prompt/tag/seconds) is still valid
    metrics: dict[str, Any]  # cached metric values still valid
    invalidated: str | None  # why cached values were discarded (None: nothing was)


def check_record(rec: Mapping[str, Any] | None, key: RecordKey) -> Reuse:
    """Compare a cached record with the current key: reuse what still matches, say why not."""
    if rec is None or "error" in rec:  # nothing cached, or a failure to retry
        return Reuse(False, {}, None)
    cache = rec.get("cache")
    if not isinstance(cache, Mapping):
        return Reuse(False, {}, "no cache key (written by an older version)")
    if cache.get("pair") != key.pair:
        return Reuse(False, {}, "pair content changed")
    if cache.get("method") != key.method:
        return Reuse(False, {}, "method config changed")
    if cache.get("index") != key.index:
        return Reuse(False, {}, "position in the pair list changed (noise seed)")
    held = cache.get("metrics") or {}
    same_class = cache.get("object_class") == key.object_class
    valid = {m: rec[m] for m in METRIC_DEPS
             if m in rec and held.get(m) == key.metrics[m] and (same_class or m not in CLASS_METRICS)}
    stale = [m for m in METRIC_DEPS if m in rec and m not in valid]
    return Reuse(True, valid, "metric settings changed" if stale else None)


def public_record(rec: Mapping[str, Any], required: Sequence[str]) -> dict[str, Any]:
    """A record as reported: no cache key, and only the metrics this run asked for."""
    return {k: v for k, v in rec.items() if k != "cache" and (k not in METRIC_DEPS or k in required)}


# ---------------------------------------------------------------- messages


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``seed: 0 -> 7, size: 128 -> 64``: the (dotted) keys whose values differ."""
    return describe_changes(changed(old, new))
