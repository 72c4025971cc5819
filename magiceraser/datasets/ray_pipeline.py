"""Ray for ``magiceraser olrd``: joining or starting Ray, and the Ray Data pipeline of each layout.

Every stage streams (Ray Data's bars show each operator); by ``layout``::

    per_stage:            listing (driver) -> read+decode (tasks) -> segment (actor pool) -> compose (tasks)
                          -> caption (actor pool) -> driver
    decode_in_segmenter:  listing -> read+decode+segment+compose (actor pool) -> caption (actor pool) -> driver
    one_pool:             listing -> every stage in one actor pool -> driver

The stage code is the same in every layout (``stages.py``), so the shards are byte-identical.
:func:`stage_layout` resolves ``layout=auto``; :func:`build_dataset` returns the lazy dataset the
driver (``driver.py``) iterates.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from magiceraser.config import config_to_dict
from magiceraser.datasets.config import OLRDConfig
from magiceraser.datasets.inputs import InputItem


def init_ray(cfg: OLRDConfig) -> bool:
    """Join the configured/ambient cluster or start a local Ray; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address in (None, "local"):
        # A new local Ray: on a busy machine its agent can take longer than Ray's 60 s default
        # to come up, which aborts the start; give it 5 minutes.
        os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
        if cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
    ray.init(address=address, **kwargs)
    return True


def input_blocks(items: Sequence[InputItem], rows_per_block: int) -> list[Any]:
    """The listing as Arrow tables of ``rows_per_block`` rows: source, key, index, shard only.

    Compact on purpose (a million inputs are ~150 MB of Arrow, where a dict per row with every
    stage's empty column took over a gigabyte in the driver); the stages add the other columns
    (``stages._mutable``).
    """
    import pyarrow as pa

    # One table, then zero-copy slices: a table per block cost ~1.5 ms each (15 s for 62K blocks).
    table = pa.table({
        "source": pa.array([it.source for it in items], pa.string()),
        "key": pa.array([it.key for it in items], pa.string()),
        "index": pa.array([it.index for it in items], pa.int64()),
        "shard": pa.array([it.shard for it in items], pa.int64()),
    })
    return [table.slice(start, rows_per_block) for start in range(0, len(items), rows_per_block)]


def build_dataset(cfg: OLRDConfig, items: list[InputItem], segmenter_name: str, elastic: bool = False):
    """The Ray Data pipeline over ``items`` (lazy; nothing runs until it is iterated).

    ``segmenter_name`` is what each sample's metadata names as its segmenter (:func:`segmenter_id`).

    ``elastic``: every actor pool runs from 1 actor up to its configured size (a rerun after a
    lost node: the survivors may not hold every actor, and a fixed-size pool would wait for
    actors that cannot start, while Ray may still count the lost node's resources for a while).
    """
    import ray
    from ray.data import ActorPoolStrategy

    from magiceraser.datasets.stages import (
        CaptionStage,
        OnePoolStage,
        SegmentStage,
        compose_batch,
        read_images,
    )

    layout = stage_layout(cfg)
    seg, cap = cfg.segmenter, cfg.captioner
    read_kwargs = {"min_side": cfg.min_side, "max_pixels": cfg.max_pixels}
    compose_kwargs = {
        "compose": config_to_dict(cfg.compose), "seed": cfg.seed, "image_format": cfg.image_format,
        "jpeg_quality": cfg.jpeg_quality, "segmenter_id": segmenter_name, "max_tags": cap.max_tags,
    }
    # vLLM pins its own torch/transformers: its actors get a virtualenv of their own (Ray runtime env).
    caption_env = {"runtime_env": {"pip": {"packages": list(cap.pip)}}} if cap.pip else {}

    def actor_stage(ds, fn, size: int, num_cpus: float, num_gpus: float, batch_size: int, **kwargs):
        # Ray 2.60 has no named parameter for max_restarts/max_task_retries (its defaults are
        # unbounded: a batch that always kills its actor would loop); they still go through
        # ray_remote_args, whose deprecation warning is for Ray 2.64 (we pin 2.60.0).
        pool = ActorPoolStrategy(min_size=1, max_size=size) if elastic and size > 1 else ActorPoolStrategy(size=size)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            return ds.map_batches(
                fn, batch_size=batch_size, batch_format="numpy", compute=pool,
                num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=cfg.max_restarts,
                max_task_retries=cfg.max_task_retries, **kwargs,
            )

    # One input block per first-stage batch keeps its work small and evenly spread.
    first_batch = {"per_stage": cfg.read_batch_size, "decode_in_segmenter": seg.batch_size, "one_pool": cap.batch_size}[layout]
    ds = ray.data.from_arrow(input_blocks(items, first_batch))
    if layout == "one_pool":
        return actor_stage(
            ds, OnePoolStage, cap.num_actors, seg.num_cpus + cap.num_cpus, seg.num_gpus + cap.num_gpus, cap.batch_size,
            fn_constructor_kwargs={"segmenter": config_to_dict(seg), "read": read_kwargs, "compose": compose_kwargs,
                                   "captioner": config_to_dict(cap)},
            **caption_env,
        )
    fused = layout == "decode_in_segmenter"
    if not fused:
        ds = ds.map_batches(read_images, batch_size=cfg.read_batch_size, batch_format="numpy",
                            num_cpus=cfg.task_num_cpus, fn_kwargs=read_kwargs)
    ds = actor_stage(
        ds, SegmentStage, seg.num_actors, seg.num_cpus, seg.num_gpus, seg.batch_size,
        fn_constructor_kwargs={"segmenter": config_to_dict(seg), "read": read_kwargs if fused else None,
                               "compose": compose_kwargs if fused else None},
    )
    if not fused:
        ds = ds.map_batches(compose_batch, batch_size=cfg.read_batch_size, batch_format="numpy",
                            num_cpus=cfg.task_num_cpus, fn_kwargs=compose_kwargs)
    # The caption stage returns only the columns the shard writer reads (stages.OUTPUT_COLUMNS).
    return actor_stage(ds, CaptionStage, cap.num_actors, cap.num_cpus, cap.num_gpus, cap.batch_size,
                       fn_constructor_kwargs={"captioner": config_to_dict(cap)}, **caption_env)


def stage_layout(cfg: OLRDConfig) -> str:
    """The layout ``cfg.layout`` resolves to: 'per_stage', 'decode_in_segmenter' or 'one_pool' (see ``OLRDConfig.layout``)."""
    if cfg.layout != "auto":
        return cfg.layout
    if cfg.segmenter.num_gpus == 0 and cfg.captioner.num_gpus == 0:
        return "one_pool"
    return "decode_in_segmenter" if cfg.segmenter.num_gpus == 0 else "per_stage"


def segmenter_id(cfg: OLRDConfig) -> str:
    """The segmenter as samples and stats.json name it: the model, or ``coco_panoptic:<annotations file>``."""
    seg = cfg.segmenter
    return seg.model if seg.backend == "mask2former" else f"coco_panoptic:{Path(seg.annotations).name}"


