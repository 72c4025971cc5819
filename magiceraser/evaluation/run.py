"""``magiceraser evaluate``: the paper's protocol over datasets x methods, resumable.

Data flow (everything under ``out_dir``, every file written atomically):

    pairs/<dataset>/<key>/{input,mask,target}.png   letterboxed pairs, built once (manifest.json last)
                                                    (folder names: labels with only [A-Za-z0-9_-])
    methods/<dataset>/<method>/images/<key>.png     erased images
    methods/<dataset>/<method>/metrics/<key>.json   per-image metrics + their cache key: the resume cache
    methods/<dataset>/<method>/method.json          method deps and metric settings of the last run (for the log)
    methods/<dataset>/<method>/inception_*.npz      FID features, keyed on the images they came from
    per_image.jsonl                                 all per-image records
    results.md, results.csv                         the table in the paper's layout
    grids/<dataset>__<method>__{best,worst}.png     best / worst cases by PSNR
    skipped.jsonl                                   pairs and images that could not be used, with reasons

Every cached file carries a key of what it depends on (``magiceraser.evaluation.cache``): pairs
the dataset config, size and source files; erased images and per-image metrics the pair's bytes,
the method's config and, per metric, the metric settings; FID features the images they came from.
A rerun reuses what still matches and recomputes the rest, logging how many were invalidated and
why: a cached image with missing or stale metrics (e.g. LPIPS switched on later) is scored without
erasing again; a changed pair or method config erases again. A resume never reports a stale score.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.atomic import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text
from magiceraser.config import config_to_dict, save_config
from magiceraser.evaluation import cache as C
from magiceraser.evaluation import metrics as M
from magiceraser.evaluation.config import DatasetConfig, EvalConfig, MetricsConfig, grid_stem
from magiceraser.evaluation.letterbox import letterbox_image, letterbox_mask
from magiceraser.evaluation.methods import MethodConfig, MethodUnavailable, build_method, load_segmenter
from magiceraser.evaluation.pairs import EvalPair, PairSkip
from magiceraser.evaluation.report import aggregate, best_and_worst, grid_image, results_csv, results_markdown
from magiceraser.imageio import decode_image, decode_mask, encode_image
from magiceraser.keys import file_name_key

MANIFEST = "manifest.json"
STAMP = "method.json"  # per method folder: the method deps and metric settings of the last run


def log(msg: str) -> None:
    print(f"[evaluate] {msg}", flush=True)


# ---------------------------------------------------------------- pairs


def iter_source(ds: DatasetConfig) -> Iterator[EvalPair | PairSkip]:
    """The dataset's pairs at their own resolution (one reader module per kind in magiceraser.evaluation.pairs)."""
    if ds.kind == "realhm":
        from magiceraser.evaluation.pairs.realhm import iter_realhm

        it = iter_realhm(ds.path, ds.realhm_layout)
    elif ds.kind == "olrd_shards":
        from magiceraser.evaluation.pairs.olrd_shards import iter_olrd_shards

        it = iter_olrd_shards(ds.path)
    elif ds.kind == "coco_panoptic":
        from magiceraser.evaluation.pairs.coco_panoptic import iter_coco_panoptic

        it = iter_coco_panoptic(ds.path, ds.panoptic_json, ds.panoptic_dir, ds.num_pairs, ds.seed, ds.min_long_side)
    else:
        from magiceraser.evaluation.pairs.openimages import iter_openimages

        seg = load_segmenter(ds.segmenter) if ds.segmenter else None
        it = iter_openimages(ds.path, ds.masks_csv, ds.masks_dir, ds.num_pairs, ds.seed, ds.min_long_side,
                             ds.class_descriptions or None, seg)
    produced = 0
    for item in it:
        if isinstance(item, EvalPair):
            if ds.num_pairs and produced >= ds.num_pairs:
                return
            if ds.min_long_side and max(item.image.shape[:2]) <= ds.min_long_side:
                continue
            produced += 1
        yield item


def materialise_pairs(ds: DatasetConfig, root: Path, size: int) -> tuple[list[str], list[dict]]:
    """Letterbox the dataset's pairs into ``root`` once; returns (keys, skip records).

    The manifest (written last) records what the pairs are built from (:func:`cache.pairs_deps`); a
    matching manifest means done. On a mismatch it is removed before rebuilding, so a rebuild killed
    half-way leaves no manifest that would vouch for a mix of old and new pairs.
    """
    manifest = root / MANIFEST
    wanted = C.pairs_deps(ds, size)
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        if doc.get("config") == wanted:
            return doc["keys"], doc["skipped"]
        log(f"{ds.name}: the pairs in {root} were built from something else "
            f"({C.changed_keys(doc.get('config') or {}, wanted)}); rebuilding them")
        manifest.unlink()
    keys: list[str] = []
    skipped: list[dict] = []
    t0 = time.time()
    for item in iter_source(ds):
        if isinstance(item, PairSkip):
            skipped.append({"dataset": ds.name, "key": item.key, "reason": item.reason, "detail": item.detail})
            continue
        key = item.key
        if key in keys:  # keys must be unique file names; disambiguate deterministically
            key = f"{key}_{len(keys)}"
        d = root / key
        image, geo = letterbox_image(item.image, size)
        target, _ = letterbox_image(item.target, size)
        mask = letterbox_mask(item.mask, size)
        if not mask.any():
            skipped.append({"dataset": ds.name, "key": key, "reason": "empty_mask", "detail": "mask vanished when scaled"})
            continue
        atomic_write_bytes(d / "input.png", encode_image(image, "png"))
        atomic_write_bytes(d / "target.png", encode_image(target, "png"))
        atomic_write_bytes(d / "mask.png", encode_image(mask.astype(np.uint8) * 255, "png"))
        meta = {**item.meta, "source_size": [geo.src_height, geo.src_width], "content_size": [geo.height, geo.width]}
        atomic_write_json(d / "meta.json", meta)
        keys.append(key)
    atomic_write_json(manifest, {"config": wanted, "keys": keys, "skipped": skipped})
    log(f"{ds.name}: {len(keys)} pairs ready ({len(skipped)} skipped) in {time.time() - t0:.1f} s")
    return keys, skipped


def load_pair(root: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = root / key
    return decode_image(d / "input.png"), decode_mask(d / "mask.png"), decode_image(d / "target.png")


# ---------------------------------------------------------------- metrics


class Scorer:
    """Per-image metrics; heavy models are loaded once, up front, so missing weights fail early."""

    def __init__(self, cfg: MetricsConfig, device: str) -> None:
        from magiceraser.evaluation.perceptual import LPIPSAlex

        self.cfg = cfg
        self.lpips = LPIPSAlex(cfg.lpips_alexnet_weights or None, device=device) if cfg.lpips else None
        self.segmenter = None
        if cfg.regrowth:
            try:
                self.segmenter = load_segmenter(cfg.regrowth_segmenter, device)
            except MethodUnavailable as exc:
                raise SystemExit(f"magiceraser evaluate: metrics.regrowth is on but {exc}") from exc

    def required(self) -> list[str]:
        keys = ["psnr", "ssim"]
        if self.cfg.masked:
            keys += ["psnr_mask", "ssim_mask"]
        if self.lpips is not None:
            keys += ["lpips"] + (["lpips_mask"] if self.cfg.masked else [])
        if self.segmenter is not None:
            keys.append("regrowth")
        return keys

    def score(self, erased: np.ndarray, mask: np.ndarray, target: np.ndarray, have: dict[str, Any]) -> dict[str, float]:
        from magiceraser.panoptic import regrowth_fraction

        out: dict[str, float] = {}
        need = [k for k in self.required() if k not in have]
        if "psnr" in need:
            out["psnr"] = M.psnr(erased, target)
        if "psnr_mask" in need:
            out["psnr_mask"] = M.psnr(erased, target, mask)
        if "ssim_mask" in need:
            out["ssim"], out["ssim_mask"] = M.ssim_whole_and_masked(erased, target, mask)
        elif "ssim" in need:
            out["ssim"] = M.ssim(erased, target)
        if "lpips" in need or "lpips_mask" in need:
            whole, masked = self.lpips(erased, target, mask if self.cfg.masked else None)
            out["lpips"] = whole
            if masked is not None:
                out["lpips_mask"] = masked
        if "regrowth" in need:
            out["regrowth"] = regrowth_fraction(mask, self.segmenter.segment([erased])[0])
        return out


# ---------------------------------------------------------------- methods


def method_dir(out: Path, ds: str, method: str) -> Path:
    # table labels may hold spaces and dots ("i. Baseline + OLRD"); folder names stay plain
    return out / "methods" / file_name_key(ds) / file_name_key(method)


def pairs_dir(out: Path, ds: str) -> Path:
    return out / "pairs" / file_name_key(ds)


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
    return C.changed_keys(old, current) if isinstance(old, dict) and "method" in old else ""


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
    deps = C.method_deps(mcfg, cfg.size, cfg.dtype, device)
    changes = _stamp_changes(mdir, {"method": deps, "metrics": C.metric_settings(cfg.metrics)})
    method_key, metric_keys = C.digest(deps), C.metric_keys(cfg.metrics)
    required = scorer.required()
    eraser = None
    records: list[dict] = []
    invalidated: Counter = Counter()
    done = failed = 0
    t0 = time.time()
    for index, key in enumerate(keys):
        mpath, ipath = mdir / "metrics" / f"{key}.json", mdir / "images" / f"{key}.png"
        rkey = C.RecordKey(digests[key], method_key, C.noise_index(mcfg.kind, index), metric_keys)
        rec = _read_record(mpath)
        reuse = C.check_record(rec, rkey)
        if reuse.invalidated:
            invalidated[reuse.invalidated] += 1
        image_ok = reuse.image and ipath.is_file()
        if image_ok and all(k in reuse.metrics for k in required):
            records.append(C.public_record(rec, required))
            continue
        image, mask, target = load_pair(pairs_root, key)
        base = {"dataset": ds.name, "method": mcfg.name, "key": key}
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
            scores = {**have, **scorer.score(erased, mask, target, have)}
            rec = {**base, **info, **scores, "cache": rkey.as_json(k for k in C.METRIC_DEPS if k in scores)}
            done += 1
        except Exception as exc:  # one bad image must not end a multi-hour run; the record keeps why
            rec = {**base, "error": f"{type(exc).__name__}: {exc}"}
            failed += 1
            log(f"{ds.name}/{mcfg.name}/{key}: failed ({rec['error']})")
        atomic_write_json(mpath, rec)
        records.append(C.public_record(rec, required))
    _log_invalidated(f"{ds.name}/{mcfg.name}", invalidated, changes)
    if done or failed:
        log(f"{ds.name}/{mcfg.name}: {done} images scored, {failed} failed, {len(keys) - done - failed} cached "
            f"({time.time() - t0:.1f} s)")
    return records, None


# ---------------------------------------------------------------- FID


def cached_features(cache: Path, paths: list[Path], weights: str, inception) -> np.ndarray:
    """Inception features of ``paths``, reused only when the cache was made from the same bytes (in
    order) with the same weights setting: a re-erased image or rebuilt pair recomputes them."""
    key = C.digest({"images": C.files_digest(paths), "weights": weights})
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as doc:
            if "key" in doc and str(doc["key"]) == key:
                return doc["features"]
        log(f"{cache}: cached Inception features are of other images or weights; recomputing them")
    feats = inception([decode_image(p) for p in paths])
    with atomic_open(cache, "wb") as fh:
        np.savez(fh, key=np.array(key), features=feats)
    return feats


def compute_fid(cfg: EvalConfig, ds: str, method: str, keys: Sequence[str], device: str, inception) -> float | None:
    """FID of the method's erased images of ``keys`` (its scored pairs) against their ground truths."""
    from magiceraser.evaluation.perceptual import fid_from_features

    out = Path(cfg.out_dir)
    mdir = method_dir(out, ds, method)
    ok = [k for k in keys if (mdir / "images" / f"{k}.png").is_file()]
    if len(ok) < 2:
        return None
    weights = cfg.metrics.fid_inception_weights
    real = cached_features(mdir / "inception_real.npz", [pairs_dir(out, ds) / k / "target.png" for k in ok], weights, inception)
    fake = cached_features(mdir / "inception_fake.npz", [mdir / "images" / f"{k}.png" for k in ok], weights, inception)
    return fid_from_features(real, fake)


# ---------------------------------------------------------------- outputs


def write_grids(cfg: EvalConfig, records: Sequence[dict]) -> list[Path]:
    out = Path(cfg.out_dir)
    written = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    for (ds, method), recs in groups.items():
        best, worst = best_and_worst(recs, cfg.grid_cases)
        for name, cases in (("best", best), ("worst", worst)):
            if not cases:
                continue
            rows = []
            for r in cases:
                image, mask, target = load_pair(pairs_dir(out, ds), r["key"])
                erased = decode_image(method_dir(out, ds, method) / "images" / f"{r['key']}.png")
                rows.append((image, mask, erased, target, f"{r['key']} {r['psnr']:.2f} dB"))
            path = out / "grids" / f"{grid_stem(ds, method)}__{name}.png"
            atomic_write_bytes(path, encode_image(grid_image(rows), "png"))
            written.append(path)
    return written


def log_wandb(cfg: EvalConfig, rows, records: Sequence[dict]) -> None:
    import wandb

    run = wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=cfg.out_dir,
                     name=cfg.wandb.run_name or Path(cfg.out_dir).name, config=config_to_dict(cfg))
    try:
        from magiceraser.evaluation.report import COLUMNS

        cols = ["dataset", "method"] + [c[0] for c in COLUMNS] + ["count"]
        run.log({"results": wandb.Table(columns=cols, data=[[r.dataset, r.method] + [r.values.get(c[0]) for c in COLUMNS] + [r.count] for r in rows])})
        keys = sorted({k for r in records for k in r})
        run.log({"per_image": wandb.Table(columns=keys, data=[[r.get(k) for k in keys] for r in records])})
    finally:
        run.finish()


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def evaluate(cfg: EvalConfig) -> int:
    """Run the whole evaluation; returns the process exit code."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    device = resolve_device(cfg.device)
    if not cfg.datasets or not cfg.methods:
        log("nothing to do: the config lists no datasets or no methods")
        return 2
    scorer = Scorer(cfg.metrics, device)  # missing LPIPS weights / segmenter: fail before any work
    inception = None
    if cfg.metrics.fid:
        from magiceraser.evaluation.perceptual import InceptionFeatures

        inception = InceptionFeatures(cfg.metrics.fid_inception_weights or None, device=device)
    records: list[dict] = []
    skipped: list[dict] = []
    fid: dict[tuple[str, str], float] = {}
    order: list[tuple[str, str]] = []
    unavailable: list[str] = []
    missing: dict[str, str] = {}  # required (non-optional) method -> why it could not run
    for ds in cfg.datasets:
        root = pairs_dir(out, ds.name)
        keys, ds_skipped = materialise_pairs(ds, root, cfg.size)
        skipped += ds_skipped
        if not keys:
            log(f"{ds.name}: no usable pairs; see skipped.jsonl")
            continue
        digests = {k: C.pair_digest(root, k) for k in keys}
        for mcfg in cfg.methods:
            if not mcfg.enabled:
                continue
            recs, reason = run_method(cfg, ds, mcfg, keys, digests, scorer, device)
            if reason is not None:
                log(f"skipping {'optional ' if mcfg.optional else ''}method {mcfg.name!r} on {ds.name}: {reason}")
                unavailable.append(f"{ds.name}/{mcfg.name}: {reason}")
                if not mcfg.optional:
                    missing.setdefault(mcfg.name, reason)
                continue
            order.append((ds.name, mcfg.name))
            records += recs
            skipped += [{"dataset": ds.name, "method": mcfg.name, "key": r["key"], "reason": "method_failed",
                         "detail": r["error"]} for r in recs if "error" in r]
            if inception is not None:
                scored = [r["key"] for r in recs if "error" not in r]
                value = compute_fid(cfg, ds.name, mcfg.name, scored, device, inception)
                if value is not None:
                    fid[(ds.name, mcfg.name)] = value
    rows = aggregate(records, fid, order)
    table = results_markdown(rows)
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_text(out / "per_image.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(out / "skipped.jsonl", "".join(json.dumps(s) + "\n" for s in skipped))
    if cfg.grid_cases:
        write_grids(cfg, records)
    if cfg.wandb.enabled:
        log_wandb(cfg, rows, records)
    print(table, flush=True)
    for line in unavailable:
        log(f"not evaluated: {line}")
    log(f"results in {out}/results.md, results.csv, per_image.jsonl, grids/")
    if missing:
        report_missing_methods(missing)
        return 2
    return 0 if rows else 1


def report_missing_methods(missing: Mapping[str, str]) -> None:
    """One line per required method that could not run: the table lacks its row, so the run fails."""
    for name, reason in missing.items():
        print(f"magiceraser evaluate: method {name!r} was not evaluated: {reason}; provide it, "
              f"or set optional: true on that method to allow a table without it", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli import config_argparser, load_cli_config

    parser = config_argparser("evaluate", "Evaluate methods with the paper's protocol (letterbox 512, PSNR/SSIM/LPIPS/FID).")
    args = parser.parse_args(argv)
    cfg = load_cli_config(EvalConfig, args)
    from magiceraser.evaluation.perceptual import MissingWeightsError

    try:
        return evaluate(cfg)
    except (MissingWeightsError, FileNotFoundError) as exc:
        print(f"magiceraser evaluate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
