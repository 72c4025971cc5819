"""Run the training loop on a Ray cluster with Ray Train's ``TorchTrainer``.

Each of ``ray.num_workers`` workers runs :func:`magiceraser.training.loop.run_training` with the
process group Ray Train created (NCCL with GPUs, gloo without); Accelerate's ``PartialState`` joins
that group from the RANK/WORLD_SIZE/LOCAL_RANK variables Ray sets. ``out_dir`` must be on storage
every node sees (a shared filesystem) so that rank 0's checkpoints can be resumed anywhere.

Submit multi-node fine-tuning with ``ray job submit`` (see ``cluster/train-rayjob.yaml``):

    ray job submit --working-dir . -- magiceraser train --config configs/train/sd15_inpaint.yaml \
        --ray ray.num_workers=16 ray.use_gpu=true out_dir=/mnt/shared/runs/sd15
"""

from __future__ import annotations

import dataclasses
from typing import Any

from magiceraser.config import build_config, config_to_dict
from magiceraser.training.config import TrainConfig


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Body of every Ray Train worker."""
    import ray.train

    from magiceraser.training.distributed import init_distributed
    from magiceraser.training.logs import setup_logging
    from magiceraser.training.loop import run_training

    cfg = build_config(TrainConfig, loop_config["config"])
    ctx = init_distributed(cfg.device)
    setup_logging(ctx.rank)
    result = run_training(cfg, ctx)
    last = result.history[-1] if result.history else {}
    ray.train.report({"steps": result.steps, "world_size": result.world_size, "rank": result.rank, "loss": last.get("train/loss", float("nan"))})


def run_on_ray(cfg: TrainConfig) -> Any:
    """Start a TorchTrainer with ``cfg.ray.num_workers`` workers and wait for it; returns Ray's Result."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    r = cfg.ray
    if not ray.is_initialized():
        ray.init(address=r.address, log_to_driver=True, ignore_reinit_error=True)
    worker_cfg = dataclasses.replace(cfg, ray=dataclasses.replace(r, enabled=False), device="cuda" if r.use_gpu else "cpu")
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config_to_dict(worker_cfg)},
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker={"CPU": r.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        run_config=RunConfig(name="magiceraser-train", storage_path=r.storage_path),
    )
    return trainer.fit()
