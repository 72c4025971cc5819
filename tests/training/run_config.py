"""A TrainConfig for tiny CPU runs, shared by the trainer's tests."""

from __future__ import annotations


def tiny_train_config(base_model, urls, out_dir, **over):
    """A TrainConfig for a few CPU steps at 64 px; ``over`` takes dotted keys (``optim.lr``)."""
    from magiceraser.config import load_config
    from magiceraser.training.config import TrainConfig

    values = {
        "model.base_model": str(base_model),
        "data.urls": [str(u) for u in urls],
        "data.resolution": 64,
        "data.batch_size": 2,
        "data.num_workers": 0,
        "data.shuffle_buffer": 4,
        "phases.total_steps": 4,
        "phases.textual_inversion_steps": 1,
        "phases.textual_inversion_subset": 1.0,
        "optim.warmup_steps": 0,
        "optim.lr": 1e-3,
        "optim.embedding_lr": 1e-3,
        "checkpoint.every": 0,
        "wandb.mode": "disabled",
        "log_every": 1,
        "out_dir": str(out_dir),
        "device": "cpu",
    }
    values.update(over)
    import yaml

    return load_config(TrainConfig, None, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in values.items()])
