"""What each training phase reads: its stream of batches, continued where the run's data state says.

Phase 1 (textual inversion) trains v* alone, so every prompt holds R* and it may read a subset of
the shards; phase 2 mixes learned and plain prompts over all of them. A process's data state
(``phase``, per-worker ``positions``, ``batches`` read, ``reseed``) is saved in every checkpoint;
a stream continues from it only within the same phase, and a ``reseed`` names new streams when the
old ones cannot be continued (another world size).
"""

from __future__ import annotations

from typing import Any

from magiceraser.training.config import TrainConfig
from magiceraser.training.data import StreamSpec
from magiceraser.training.distributed import DistContext
from magiceraser.training.examples import ExampleSpec


def phase_data_state(data_state: dict[str, Any], phase: int) -> dict[str, Any]:
    """The data state a stream of ``phase`` starts from: the saved one within its phase, else the phase's start."""
    resumed = data_state.get("phase") == phase
    positions = data_state["positions"] if resumed else {}
    batches = data_state["batches"] if resumed else 0
    reseed = data_state.get("reseed", 0)
    return {"phase": phase, "positions": dict(positions), "batches": batches, "reseed": reseed}


def phase_stream_spec(cfg: TrainConfig, phase: int, urls: list[str], model: Any, ctx: DistContext,
                      data_state: dict[str, Any]) -> StreamSpec:
    """This process's stream of ``phase`` over ``urls``, starting at ``data_state`` (from :func:`phase_data_state`)."""
    d = cfg.data
    return StreamSpec(
        urls=urls,
        example=ExampleSpec(
            resolution=d.resolution,
            vae_scale_factor=model.vae_scale_factor,
            mode=d.mode,
            crop_scale_min=d.crop_scale_min,
            mask_dilate_max=d.mask_dilate_max,
            random_mask_max_boxes=d.random_mask_max_boxes,
            seed=d.seed,
        ),
        batch_size=d.batch_size,
        tokenizer=model.tokenizer,
        token=cfg.model.token,
        # Phase 1 is textual inversion: every prompt must contain R* for v* to learn anything.
        learned_prob=1.0 if phase == 1 else d.prompt_learned_prob,
        tag_choice=d.tag_choice,
        shuffle_buffer=d.shuffle_buffer,
        rank=ctx.rank,
        world_size=ctx.world_size,
        subset_fraction=cfg.phases.textual_inversion_subset if phase == 1 else 1.0,
        cached=bool(d.latent_cache),
        stream_name=f"phase{phase}-r{data_state['reseed']}",
        start_positions=dict(data_state["positions"]),
        worker_offset=data_state["batches"] % max(1, d.num_workers),
    )
