"""Typed configuration of the prompt-tuning trainer (docs/method.md part 2).

``TrainConfig`` nests one dataclass per component: data, model (placeholder token + LoRA), phases,
optimisation, checkpoints, W&B, validation and the Ray launcher. Every field has a default that
matches the paper where the paper gives a number (lr 1e-4, 512x512, p = 0.5 prompt mixing).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any, Literal

from magiceraser.prompts import DEFAULT_TOKEN
from magiceraser.storage import is_object_store, public_options


@dataclass
class DataConfig:
    urls: list[str] = field(default_factory=list)
    """OLRD shards: local paths, globs (``demo/olrd/olrd-*.tar``), brace patterns
    (``olrd-{000000..000099}.tar``) or fsspec URLs (``s3://bucket/olrd-{000000..000099}.tar``)."""
    mode: Literal["olrd", "random_mask"] = "olrd"
    """``olrd``: input Ĩ with mask m̃, target I. ``random_mask``: random masks over the original I
    (traditional inpainting training, the paper's ablation row i)."""
    resolution: int = 512
    """Side of the square training image in pixels (a multiple of 8)."""
    batch_size: int = 4
    """Samples per process per micro-step."""
    num_workers: int = 2
    """DataLoader worker processes per training process (0 = load in the training process)."""
    shuffle_buffer: int = 1000
    """Samples held in the shuffle buffer of each worker (0 or 1 = no shuffling)."""
    crop_scale_min: float = 0.5
    """The square crop's side is drawn in [this fraction of the image's short side, the short side],
    and at least the mask's extent, so the crop always contains the whole mask."""
    prompt_learned_prob: float = 0.5
    """Probability of the prompt "A photo of R* {tag}" per sample; otherwise the sample's caption."""
    tag_choice: Literal["first", "random"] = "first"
    """Which background tag goes into the learned prompt: the largest (as at inference) or a random one."""
    random_mask_max_boxes: int = 4
    """random_mask mode: at most this many rectangles/ellipses/strokes per mask."""
    mask_dilate_max: int = 0
    """Mask jitter: dilate the training mask by a random 0..N px (0 = off; docs/method.md, "Robust masks")."""
    latent_cache: str = ""
    """Directory (or fsspec URL) of latent-cache shards written by ``magiceraser cache-latents``; when
    set, training reads VAE latents from it instead of encoding images every step."""
    seed: int = 0
    """Seed of shard sampling, shuffling, crops and prompt choice."""

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8 (the VAE downsamples 8x), got {self.resolution}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if not 0.0 <= self.prompt_learned_prob <= 1.0:
            raise ValueError(f"prompt_learned_prob must be in [0, 1], got {self.prompt_learned_prob}")
        if self.random_mask_max_boxes < 1:
            raise ValueError(f"random_mask_max_boxes must be >= 1, got {self.random_mask_max_boxes}")
        if self.mask_dilate_max < 0:
            raise ValueError(f"mask_dilate_max must be >= 0, got {self.mask_dilate_max}")
        if self.latent_cache and self.mode == "random_mask":
            raise ValueError(
                "latent_cache cannot be used with mode=random_mask (the masks are drawn afresh every visit); "
                "unset data.latent_cache or use mode=olrd"
            )


@dataclass
class LoraSettings:
    rank: int = 4
    """LoRA rank r."""
    alpha: float = 4.0
    """LoRA alpha; the update is scaled by alpha / rank (saved in the export so stock loaders agree)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    """UNet module names that get adapters (default: the attention projections)."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module (e.g. [to_q, to_k, to_v, to_out.0])")


@dataclass
class ModelConfig:
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-inpainting"
    """Diffusers directory or Hugging Face id of SD 1.5 Inpainting (9-channel UNet)."""
    revision: str | None = None
    """Hub revision of the base model (None = default branch)."""
    token: str = DEFAULT_TOKEN
    """The placeholder token R* added to the tokenizer."""
    init_word: str = "background"
    """A word the tokenizer maps to one token; its embedding initialises v*."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters on the UNet (phase 2)."""
    gradient_checkpointing: bool = False
    """Recompute UNet and text-encoder activations in the backward pass (less memory, ~30% slower);
    the frozen text encoder then runs in train mode, which computes the same while its dropouts are 0."""

    def __post_init__(self) -> None:
        if not self.base_model:
            raise ValueError("base_model must name a diffusers directory or Hub id")
        if not self.token or any(c.isspace() for c in self.token):
            raise ValueError(f"token must be one word without spaces, got {self.token!r}")
        if not self.init_word or any(c.isspace() for c in self.init_word):
            raise ValueError(f"init_word must be a single word, got {self.init_word!r}")


@dataclass
class PhaseConfig:
    textual_inversion_steps: int = 1000
    """Phase 1: optimizer steps during which only v* trains (textual inversion)."""
    textual_inversion_subset: float = 0.05
    """Phase 1 reads this fraction of the samples (chosen by a hash of the sample key and the seed)."""
    total_steps: int = 50_000
    """Optimizer steps in all (phase 1 + phase 2, where v* and LoRA train jointly)."""

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.textual_inversion_steps <= self.total_steps:
            raise ValueError(
                f"textual_inversion_steps must be in [0, total_steps={self.total_steps}], got {self.textual_inversion_steps}"
            )
        if not 0.0 < self.textual_inversion_subset <= 1.0:
            raise ValueError(f"textual_inversion_subset must be in (0, 1], got {self.textual_inversion_subset}")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """Peak learning rate of the LoRA weights (paper: 1e-4)."""
    embedding_lr: float = 1e-4
    """Peak learning rate of v*."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) of the LoRA weights; 0 = Adam as in the paper."""
    embedding_weight_decay: float = 0.0
    """Decoupled weight decay of v* (it applies to v* alone: no frozen rows exist in the optimizer)."""
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    """Learning-rate schedule (diffusers.optimization.get_scheduler)."""
    warmup_steps: int = 500
    """Linear warm-up steps."""
    grad_accumulation: int = 1
    """Micro-steps per optimizer step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping; the norm is logged either way)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Compute dtype of the frozen weights and of autocast; trainable weights stay fp32."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.embedding_lr <= 0:
            raise ValueError(f"lr and embedding_lr must be > 0, got {self.lr}, {self.embedding_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_accumulation < 1:
            raise ValueError(f"grad_accumulation must be >= 1, got {self.grad_accumulation}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.weight_decay < 0 or self.embedding_weight_decay < 0:
            raise ValueError("weight_decay and embedding_weight_decay must be >= 0")


@dataclass
class CheckpointConfig:
    every: int = 1000
    """Save a checkpoint every N optimizer steps (0 = only the final export; a preempted run still
    saves one before it exits)."""
    keep_last: int = 3
    """Keep the newest K checkpoints of this run (another run's are never pruned)."""
    dir: str = ""
    """Where checkpoints go: empty = ``{out_dir}/checkpoints``; a path on storage every node reads,
    or an object-store URL (``s3://bucket/runs/sd15/checkpoints``: each file is one PUT under its
    final key, ``state.json`` last), so a checkpoint outlives the node that wrote it."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options of an object-store ``dir`` (endpoint_url, profile, ...); credentials
    otherwise come from the standard AWS_* / FSSPEC_* variables, as for the data engine."""

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"every must be >= 0, got {self.every}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")


#: Signals that cannot be caught: they cannot ask a run to save and leave.
_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}


@dataclass
class PreemptionConfig:
    signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signals that mean "save and leave": every process finishes its optimizer step, the
    processes agree on the step, save a checkpoint together and exit with status 75 (restart me).
    Kubernetes sends SIGTERM before it kills a pod; SLURM sends what ``--signal=USR1@60`` asks for.
    Empty = the default action of each signal (the process dies; the last checkpoint remains)."""

    def __post_init__(self) -> None:
        for name in self.signals:
            if not isinstance(name, str) or not name.startswith("SIG") or not hasattr(signal, name) or name.startswith("SIG_"):
                raise ValueError(f"signals: {name!r} is not a signal name (such as SIGTERM, SIGUSR1, SIGUSR2)")
            if name in _UNCATCHABLE:
                raise ValueError(f"signals: {name} cannot be caught, so it cannot ask the run to save first")


@dataclass
class WandbConfig:
    mode: Literal["online", "offline", "disabled"] = "offline"
    """W&B mode; offline writes under ``{out_dir}/wandb`` with no network (sync later with `wandb sync`)."""
    project: str = "magiceraser"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team/user); None = the default of the logged-in account."""
    run_name: str | None = None
    """Run name; None = W&B chooses one."""
    tags: list[str] = field(default_factory=list)
    """Run tags."""
    log_every: int = 10
    """Log scalars every N optimizer steps."""

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


@dataclass
class ValidationConfig:
    urls: list[str] = field(default_factory=list)
    """Held-out shards; the first ``num_samples`` samples are erased at every validation (empty = off)."""
    num_samples: int = 4
    """Held-out samples per validation grid."""
    every: int = 1000
    """Validate every N optimizer steps (0 = only at the end)."""
    num_inference_steps: int = 25
    """Denoising steps of the stock StableDiffusionInpaintPipeline used for validation."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale."""
    seed: int = 0
    """Generator seed, fixed so grids are comparable across steps."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.every < 0 or self.num_inference_steps < 1:
            raise ValueError("every must be >= 0 and num_inference_steps >= 1")


@dataclass
class RayConfig:
    enabled: bool = False
    """Run the training loop under Ray Train's TorchTrainer (``magiceraser train --ray`` sets this)."""
    address: str | None = None
    """Ray cluster address (None = connect to RAY_ADDRESS / the cluster of ``ray job submit``, else start local Ray)."""
    num_workers: int = 2
    """Training workers (one process per GPU)."""
    use_gpu: bool = False
    """Give each worker one GPU (and use NCCL)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker (its DataLoader workers run inside this reservation)."""
    storage_path: str | None = None
    """Ray Train storage path (shared filesystem or s3://...); None = Ray's default."""
    max_failures: int = 3
    """Restart the workers this many times after a lost worker or node (-1 = without limit, 0 =
    never); each restart continues from the newest intact checkpoint of this run."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be >= -1 (-1 = without limit), got {self.max_failures}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    """Output directory (local or shared filesystem, not s3://): the final export (loadable by stock diffusers), checkpoints/, validation/, wandb/."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model, placeholder token and LoRA."""
    phases: PhaseConfig = field(default_factory=PhaseConfig)
    """Phase 1 (textual inversion) and phase 2 (v* + LoRA) lengths."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer, schedule, accumulation, clipping, precision."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Periodic checkpoints."""
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)
    """What a preemption signal does."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Validation grids on held-out samples."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray Train launcher."""
    resume: bool = False
    """Continue from the newest checkpoint in ``{out_dir}/checkpoints`` (a fresh start if there is none);
    refused if the checkpoint was trained with other settings (see ``resume_allow_changes``)."""
    resume_allow_changes: list[str] = field(default_factory=list)
    """Settings (dotted keys, or a prefix such as ``data``) that may differ from the checkpoint's on
    resume, beyond those always allowed (phases.total_steps, log_every, num_threads, wandb,
    checkpoint, validation); ``--allow-change world_size`` continues on another number of GPUs."""
    overwrite: bool = False
    """Start afresh in an ``out_dir`` that holds another run, deleting its checkpoints and export first."""
    seed: int = 0
    """Seed of noise, timesteps and LoRA initialisation."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` = CUDA when available."""
    log_every: int = 10
    """Print a progress line every N optimizer steps (rank 0)."""
    num_threads: int = 0
    """torch intra-op CPU threads of each training process (0 = torch's default; 1 on busy small machines)."""
    lock_stale_s: float = 120.0
    """``out_dir/job.lock`` (and the checkpoint folder's) counts as abandoned this many seconds after
    its owner's last heartbeat; until then a second run on the folder is refused."""

    def __post_init__(self) -> None:
        if self.lock_stale_s <= 0:
            raise ValueError(f"lock_stale_s must be > 0, got {self.lock_stale_s}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")
        if not self.out_dir:
            raise ValueError("out_dir must be set")
        if is_object_store(self.out_dir):
            # W&B's offline files and the validation grids need a filesystem; checkpoints, which must
            # outlive a node, may go to an object store (checkpoint.dir). The export is three files:
            # copy them up once the run is done.
            raise ValueError(
                f"out_dir must be a local or shared filesystem path, not an object store ({self.out_dir!r}): W&B and "
                "the validation grids write files there; train into a local out_dir with checkpoint.dir=s3://... so "
                "checkpoints outlive the node, and copy the export (magiceraser.json, *.safetensors) up afterwards"
            )
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: --resume continues the run in out_dir, --overwrite replaces it")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


def public_train_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the secrets of ``checkpoint.storage_options`` masked, for every record a run writes
    (``train_config.yaml``, W&B's config, checkpoint markers, the export): who reads those must not
    learn the credentials that wrote the checkpoints."""
    import dataclasses

    if not cfg.checkpoint.storage_options:
        return cfg
    return dataclasses.replace(cfg, checkpoint=dataclasses.replace(
        cfg.checkpoint, storage_options=public_options(cfg.checkpoint.storage_options)))
