"""Building a cache: which shards are missing or stale, encoding them here or as Ray tasks, ``cache.json`` last."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from magiceraser.errors import UserError
from magiceraser.fingerprint import changed, describe_changes, digest
from magiceraser.lock import OutputLock
from magiceraser.storage import Folder, public_options
from magiceraser.training.latent_cache.config import (
    CACHE_FORMAT,
    CACHE_META,
    MATCHED_FIELDS,
    LatentCacheConfig,
)
from magiceraser.training.latent_cache.encode import (
    _load_vae,
    _stats_name,
    encode_shard,
    shard_dependencies,
    stored_vae_digest,
)
from magiceraser.write_errors import WriteError, writing

log = logging.getLogger(__name__)


def _reusable(out: Folder, name: str, deps: dict[str, Any], listing: dict[str, int]) -> tuple[bool, str]:
    """Whether cache shard ``name``'s stats record ``deps``; else why not (for the log).

    ``listing``: the folder's files (one listing for all shards, one request on object storage).
    """
    if _stats_name(name) not in listing:
        return False, "not built"
    try:
        old = json.loads(out.read_text(_stats_name(name)))
    except FileNotFoundError:
        return False, "not built"
    except ValueError:
        return False, "unreadable stats"
    if old.get("fingerprint") == digest(deps) and name in listing:
        return True, ""
    return False, describe_changes(changed(old.get("dependencies") or {}, deps))


def build_cache(cfg: LatentCacheConfig) -> dict[str, Any]:
    """Encode every shard whose cache is missing or stale; write ``cache.json`` last. Returns the summary.

    Holds the folder's lock (``job.lock``) throughout: a second build on it is refused at once.
    """
    from magiceraser.olrd_samples import expand_urls

    urls = expand_urls(cfg.urls, key="urls")
    names = [Path(u.rstrip("/").split("/")[-1]).name for u in urls]
    if len(set(names)) != len(names):
        raise UserError("urls: shard file names must be unique across urls (cache shards are named after them)")
    out = Folder(cfg.out_dir, cfg.storage_options)
    try:
        out.ensure()
    except (OSError, ValueError) as exc:
        raise UserError(f"out_dir={cfg.out_dir!r} cannot be used ({exc}); check the path, or the bucket, "
                        "credentials (AWS_* variables, storage_options) and endpoint") from None
    # One build per cache folder: a second one would encode the same shards and sweep our temporaries.
    lock = OutputLock(out, log=lambda m: log.warning("%s", m))
    with writing(lock.path, "the cache's lock file"):
        lock.acquire()
    try:
        return _build_locked(cfg, urls, names, out)
    finally:
        lock.release()


def _build_locked(cfg: LatentCacheConfig, urls: list[str], names: list[str], out: Folder) -> dict[str, Any]:
    from magiceraser.config import config_to_dict

    out.sweep_temporaries()
    vae_config = stored_vae_digest(cfg)
    deps = {n: shard_dependencies(u, cfg, vae_config) for u, n in zip(urls, names)}
    todo, reasons = [], {}
    listing = out.list()
    for u, n in zip(urls, names):
        ok, why = _reusable(out, n, deps[n], listing)
        if not ok:
            todo.append((u, out.url(n), deps[n]))
            reasons[why] = reasons.get(why, 0) + 1
    log.info("latent cache: %d of %d shards to encode into %s%s", len(todo), len(urls), out,
             "".join(f"; {k} x{v}" for k, v in reasons.items()))
    if todo:
        # The marker goes first: a build killed half-way must not leave a cache.json vouching for it.
        out.remove(CACHE_META)
    results, failures = _run_encodes(cfg, todo)
    if failures:
        raise UserError(f"latent cache: {len(failures)} source shard(s) could not be encoded; "
                        f"first: {failures[0]}; fix or remove them from urls and rerun (finished shards are kept)")
    written = sum(r["written"] for r in results)
    meta = {k: getattr(cfg, k) for k in MATCHED_FIELDS}
    meta.update(format=CACHE_FORMAT, base_model=cfg.base_model, revision=cfg.revision, vae_config=vae_config,
                storage_dtype=cfg.storage_dtype, shards={n: digest(deps[n]) for n in names},
                config={**config_to_dict(cfg), "storage_options": public_options(cfg.storage_options)})
    with writing(out.url(CACHE_META), "the cache's index"):
        out.write_json(CACHE_META, meta)
    return {"encoded_shards": len(results), "written": written, "out_dir": str(out)}


def _run_encodes(cfg: LatentCacheConfig, todo: list[tuple[str, str, dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Encode ``todo`` here or as Ray tasks; every shard is tried, failures are returned as messages."""
    results, failures = [], []
    if cfg.executor == "ray" and todo:
        import ray

        if not ray.is_initialized():
            ray.init(address=cfg.ray_address, ignore_reinit_error=True)
        task = ray.remote(num_gpus=cfg.gpus_per_task, num_cpus=1)(encode_shard)
        refs = {task.remote(u, o, cfg, d): u for u, o, d in todo}
        for ref, url in refs.items():
            try:
                results.append(ray.get(ref))
            except Exception as exc:  # a task's OSError arrives wrapped in a RayTaskError
                cause = getattr(exc, "cause", None) or exc
                if isinstance(cause, WriteError):  # the cache's storage is full: every other task would fail alike
                    raise cause from None
                failures.append(f"{url}: {cause}")
        return results, failures
    vae = None
    for u, o, d in todo:
        try:
            vae = vae or _load_vae(cfg)
            results.append(encode_shard(u, o, cfg, d, vae=vae))
        except OSError as exc:
            log.error("latent cache: %s", exc)
            failures.append(str(exc))
    return results, failures
