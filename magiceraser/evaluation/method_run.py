"""One method over one dataset's pairs: erase and score every pair without a valid cached result.

    methods/<dataset>/<method>/images/<key>.png     erased images
    methods/<dataset>/<method>/metrics/<key>.json   per-image metrics + their cache key: the resume cache
    methods/<dataset>/<method>/method.json          method deps and metric settings of the last run (for the log)

A cached record is reused only under the same pair content, method deps and metric settings
(:func:`magiceraser.evaluation.cache.check_record`); a cached image with missing or stale metrics
is scored again without erasing; one failing image is recorded and the run goes on.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from magiceraser.atomic import atomic_write_bytes, atomic_write_json
from magiceraser.evaluation.cache import (
    METRIC_DEPS,
    RecordKey,
    changed_keys,
    check_record,
    digest,
    method_deps,
    metric_keys,
    metric_settings,
    noise_index,
    public_record,
)
from magiceraser.evaluation.config import DatasetConfig, EvalConfig
from magiceraser.evaluation.console import log
from magiceraser.evaluation.layout import STAMP, method_dir, pairs_dir, target_path
from magiceraser.evaluation.methods import MethodConfig, MethodUnavailable, build_method
from magiceraser.evaluation.pair_store import load_meta, load_pair, object_class
from magiceraser.evaluation.scoring import Scorer
from magiceraser.imageio import decode_image, encode_image


def _read_record(path: Path) -> dict | None:
    """A cached per-image record, or None when absent."""
    return json.loads(path.read_text()) if path.is_file() else None


def _stamp_changes(mdir: Path, current: dict[str, Any]) -> str:
    """What changed since the method folder's last run (for the invalidation log line); records the
    current state. The per-image keys, not this stamp, decide what is reused."""
    path = mdir / STAMP
    old = _read_record(path)
    if old == current:
        return ""
    atomic_write_json(path, current)
    return changed_keys(old, current) if isinstance(old, dict) and "method" in old else ""


def _log_invalidated(label: str, reasons: Counter, changes: str) -> None:
    """One line: how many cached results were discarded, and why."""
    if not reasons:
        return
    why = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common())
    log(f"{label}: {sum(reasons.values())} cached results invalidated ({why}"
        + (f"; since the last run: {changes}" if changes else "") + "); recomputing them")


def run_method(
    cfg: EvalConfig, ds: DatasetConfig, mcfg: MethodConfig, keys: Sequence[str], digests: Mapping[str, str],
    scorer: Scorer, device: str,
) -> tuple[list[dict], str | None]:
    """Erase and score every pair without a valid cached result; returns (records, reason the method was skipped).

    ``digests`` are the pairs' content digests; a cached record is reused only under the same pair
    content, method deps and metric settings (:func:`cache.check_record`).
    """
    out = Path(cfg.out_dir)
    pairs_root = pairs_dir(out, ds.name)
    mdir = method_dir(out, ds.name, mcfg.name)
    deps = method_deps(mcfg, cfg.size, cfg.dtype, device)
    changes = _stamp_changes(mdir, {"method": deps, "metrics": metric_settings(cfg.metrics)})
    method_key, metric_digests = digest(deps), metric_keys(cfg.metrics)
    eraser = None
    records: list[dict] = []
    invalidated: Counter = Counter()
    done = failed = 0
    t0 = time.time()
    for index, key in enumerate(keys):
        mpath, ipath = mdir / "metrics" / f"{key}.json", mdir / "images" / f"{key}.png"
        cls = object_class(load_meta(pairs_root, key))
        rkey = RecordKey(digests[key], method_key, noise_index(mcfg.kind, index), metric_digests, cls)
        required = scorer.required(has_target=target_path(pairs_root, key).is_file())
        rec = _read_record(mpath)
        reuse = check_record(rec, rkey)
        if reuse.invalidated:
            invalidated[reuse.invalidated] += 1
        image_ok = reuse.image and ipath.is_file()
        if image_ok and all(k in reuse.metrics for k in required):
            records.append(public_record(rec, required))
            continue
        image, mask, target = load_pair(pairs_root, key)
        base = {"dataset": ds.name, "method": mcfg.name, "key": key, **({"object_class": cls} if cls else {})}
        try:
            if image_ok:
                erased, info = decode_image(ipath), {k: rec[k] for k in ("prompt", "tag", "seconds") if k in rec}
                have = reuse.metrics
            else:
                if eraser is None:
                    try:
                        eraser = build_method(mcfg, device=device, dtype=cfg.dtype or None, size=cfg.size)
                    except MethodUnavailable as exc:
                        return records, str(exc)
                ipath.unlink(missing_ok=True)  # a stale image must not outlive a failed erase (FID, grids)
                t = time.time()
                erased, info = eraser(image, mask, index, key)
                info = {**{k: v for k, v in info.items() if v is not None}, "seconds": round(time.time() - t, 3)}
                if erased.shape != image.shape:
                    raise ValueError(f"method returned shape {erased.shape}, expected {image.shape}")
                atomic_write_bytes(ipath, encode_image(erased, "png"))
                have = {}
            scores = {**have, **scorer.score(erased, mask, target, have, cls)}
            rec = {**base, **info, **scores, "cache": rkey.as_json(k for k in METRIC_DEPS if k in scores)}
            done += 1
        except Exception as exc:  # one bad image must not end a multi-hour run; the record keeps why
            rec = {**base, "error": f"{type(exc).__name__}: {exc}"}
            failed += 1
            log(f"{ds.name}/{mcfg.name}/{key}: failed ({rec['error']})")
        atomic_write_json(mpath, rec)
        records.append(public_record(rec, required))
    _log_invalidated(f"{ds.name}/{mcfg.name}", invalidated, changes)
    if done or failed:
        log(f"{ds.name}/{mcfg.name}: {done} images scored, {failed} failed, {len(keys) - done - failed} cached "
            f"({time.time() - t0:.1f} s)")
    return records, None
