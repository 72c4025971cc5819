"""Typed configs of the OLRD data engine: one dataclass per component, loaded from YAML.

``OLRDConfig`` is what ``magiceraser olrd --config configs/olrd/*.yaml key=value ...`` builds;
its nested sections configure the segmentation stage, the compose stage (pure numpy, see
:mod:`magiceraser.datasets.compose`), the captioning stage and the Ray resources of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from magiceraser.datasets.compose import ComposeConfig
from magiceraser.models.captioner import DEFAULT_LLAVA
from magiceraser.wandb_runs import WandbSettings

__all__ = ["SegmenterConfig", "CaptionerConfig", "OLRDConfig", "ComposeConfig", "WandbSettings"]


def _check_pool(prefix: str, num_actors: int, num_gpus: float, num_cpus: float, batch_size: int) -> None:
    if num_actors < 1:
        raise ValueError(f"{prefix}.num_actors must be >= 1, got {num_actors}")
    if num_gpus < 0:
        raise ValueError(f"{prefix}.num_gpus must be >= 0, got {num_gpus}")
    if num_cpus <= 0:
        raise ValueError(f"{prefix}.num_cpus must be > 0, got {num_cpus}")
    if batch_size < 1:
        raise ValueError(f"{prefix}.batch_size must be >= 1, got {batch_size}")


# Layout names before they said what they are -> their names now (old configs keep working).
LEGACY_LAYOUTS = {"split": "per_stage", "segment": "decode_in_segmenter", "single": "one_pool"}

@dataclass
class SegmenterConfig:
    """Panoptic segmentation stage (a Ray actor pool)."""

    backend: Literal["mask2former", "coco_panoptic"] = "mask2former"
    """'mask2former': Mask2Former through transformers; 'coco_panoptic': ground-truth annotations."""
    model: str = "facebook/mask2former-swin-large-coco-panoptic"
    """Mask2Former checkpoint: Hugging Face id or local directory (mask2former backend)."""
    annotations: str = ""
    """COCO panoptic JSON file (coco_panoptic backend); images are matched by the path its file_name names, by base name only where unique."""
    png_dir: str = ""
    """Folder of the panoptic PNGs; empty: the folder next to the JSON named like its stem."""
    device: str = "auto"
    """'auto' (CUDA when the actor got a GPU, else CPU), 'cpu', 'cuda', 'cuda:N'."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """'auto' = float16 on GPU, float32 on CPU."""
    batch_size: int = 8
    """Images per forward pass (and per Ray batch)."""
    num_actors: int = 1
    """Size of the actor pool (one model copy per actor)."""
    num_gpus: float = 0.0
    """GPUs per actor (e.g. 1, or 0.5 to pack two actors on a GPU)."""
    num_cpus: float = 1.0
    """CPUs per actor."""
    threshold: float = 0.5
    """Mask2Former post-processing: minimum class score of a kept segment."""
    mask_threshold: float = 0.5
    """Mask2Former post-processing: mask probability threshold."""
    overlap_mask_area_threshold: float = 0.8
    """Mask2Former post-processing: drop segments mostly hidden behind others."""
    fuse_stuff: bool = True
    """Fuse all instances of a stuff class into one segment (``label_ids_to_fuse``)."""

    def __post_init__(self) -> None:
        _check_pool("segmenter", self.num_actors, self.num_gpus, self.num_cpus, self.batch_size)
        if self.backend == "mask2former" and not self.model:
            raise ValueError("segmenter.model must name a Mask2Former checkpoint for backend mask2former")
        if self.backend == "coco_panoptic" and not self.annotations:
            raise ValueError("segmenter.annotations must point to a COCO panoptic JSON for backend coco_panoptic")
        for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"segmenter.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class CaptionerConfig:
    """Background captioning stage (a Ray actor pool) describing the ORIGINAL image I."""

    backend: Literal["vllm", "transformers"] = "vllm"
    """'vllm': batched LLaVA on GPUs (``pip install magiceraser[vllm]``); 'transformers': any device."""
    model: str = DEFAULT_LLAVA
    """LLaVA checkpoint: Hugging Face id or local directory."""
    device: str = "auto"
    """transformers backend: 'auto', 'cpu', 'cuda', 'cuda:N'."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """'auto' = float16 on GPU, float32 on CPU."""
    batch_size: int = 16
    """Images per generate call (and per Ray batch)."""
    num_actors: int = 1
    """Size of the actor pool (one model copy per actor)."""
    num_gpus: float = 0.0
    """GPUs per actor (vLLM needs >= 1 unless tensor_parallel_size spreads it)."""
    num_cpus: float = 1.0
    """CPUs per actor."""
    max_new_tokens: int = 77
    """Longest caption in tokens (77 = the CLIP text encoder's context)."""
    max_tags: int = 3
    """At most this many background tags go into the question."""
    gpu_memory_utilization: float = 0.85
    """vLLM: share of the GPU's memory it may take."""
    max_model_len: int = 2048
    """vLLM: context length (LLaVA-1.5 uses 576 image tokens + the question)."""
    tensor_parallel_size: int = 1
    """vLLM: GPUs one model is split over (set num_gpus to the same number)."""
    pip: list[str] = field(default_factory=list)
    """Packages Ray installs in a virtualenv for the caption actors only (e.g. ["vllm==0.32.0"], which pins its own transformers)."""

    def __post_init__(self) -> None:
        _check_pool("captioner", self.num_actors, self.num_gpus, self.num_cpus, self.batch_size)
        if not self.model:
            raise ValueError("captioner.model must name a LLaVA checkpoint")
        if self.max_new_tokens < 1:
            raise ValueError(f"captioner.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_tags < 1:
            raise ValueError(f"captioner.max_tags must be >= 1, got {self.max_tags}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"captioner.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"captioner.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")


@dataclass
class OLRDConfig:
    """The whole OLRD job: inputs -> segment -> compose -> caption -> WebDataset shards."""

    input: str = ""
    """Directory tree of images, or a list file ('path' or 'path label' per line, e.g. places365_train_standard.txt); local or fsspec URL."""
    input_root: str = ""
    """Base for relative paths in a list file (Places365: the data_256/ or data_large/ folder); empty: the list file's folder."""
    output: str = ""
    """Output directory: a local/shared path (files renamed into place) or an fsspec URL (s3://bucket/prefix: one PUT per object, no temporary keys)."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for an object-store output (e.g. {endpoint_url: ..., anon: false}); empty: AWS_* / FSSPEC_* variables. Secrets are masked in job.json."""
    samples_per_shard: int = 1000
    """Inputs per shard; a shard holds this many samples minus its skipped inputs."""
    image_format: Literal["jpg", "png"] = "jpg"
    """Format of original/blended images in the shards; png is lossless."""
    jpeg_quality: int = 95
    """JPEG quality (image_format=jpg)."""
    seed: int = 0
    """Global seed; with the sample key it seeds every random choice (same input, same seed -> same bytes)."""
    limit: int = 0
    """Use only the first N inputs of the listing (0 = all)."""
    min_side: int = 64
    """Skip images whose short side is smaller (reason too_small)."""
    max_pixels: int = 64_000_000
    """Skip images with more pixels (decompression-bomb guard, reason too_large; may exceed PIL's own 89.5 MP limit)."""
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    """Object selection, placement search and blending."""
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    """Panoptic segmentation backend and its actor pool."""
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    """Captioning backend and its actor pool."""
    layout: Literal["auto", "per_stage", "decode_in_segmenter", "one_pool", "split", "segment", "single"] = "auto"
    """How stages map onto Ray. 'per_stage': decode and compose are Ray tasks, segmentation and
    captioning actor pools (CPU work overlaps GPU models; for GPU clusters). 'decode_in_segmenter':
    decode and compose run inside the segmentation actors (no decoded pixels or panoptic maps cross
    the object store). 'one_pool': one pool of captioner.num_actors actors runs every stage, each
    holding both models with the resources of one segmentation plus one caption actor (no queue
    between stages: the fastest and leanest on CPUs). 'auto': 'one_pool' when neither model has a
    GPU, 'decode_in_segmenter' when only the captioner has one, else 'per_stage'. The former names
    'split', 'segment', 'single' are still accepted."""
    read_batch_size: int = 16
    """Inputs per batch of the read/decode and compose tasks (layout per_stage)."""
    task_num_cpus: float = 1.0
    """CPUs per read/decode and compose task (fractions let tasks share cores with model actors)."""
    ray_address: str = ""
    """Ray cluster to join ('' = RAY_ADDRESS if set, else a new local Ray; 'auto' = the running cluster; 'local' = always a new one)."""
    num_cpus: int = 0
    """CPUs of a new local Ray (0 = all of this machine's)."""
    max_restarts: int = 3
    """Times Ray restarts a crashed model actor."""
    max_task_retries: int = 3
    """Times Ray retries a batch whose actor crashed."""
    node_loss_retries: int = 3
    """Times the driver re-plans and reruns the unfinished shards within the same command after losing a node
    (or an actor or object Ray could not recover); shards already written are kept."""
    node_loss_settle_s: float = 5.0
    """Seconds the driver waits after a lost node before the rerun (Ray releases the failed attempt's actors)."""
    lost_actor_timeout_s: float = 30.0
    """Seconds a model actor may stay restarting after a node was lost before the driver gives it up and
    re-plans its batch on the nodes alive (Ray would wait for a node with room for it forever); 0 = wait
    (an autoscaler replaces lost nodes)."""
    max_open_shards: int = 64
    """Shards whose rows the driver keeps in memory while waiting for their last input; rows of further
    open shards go to a temporary spill file in the output (bounds the driver's memory however the cluster reorders work)."""
    progress_interval_s: float = 10.0
    """Seconds between the images/s + skip-count lines."""
    retry_failed: bool = False
    """Also rebuild the finished shards holding retryable skips (a model raised, a read failed: see skipped.jsonl's retryable)."""
    lock_stale_s: float = 120.0
    """A job's output lock (OUT/job.lock) whose heartbeat is older than this is stale and taken over; keep it well above clock skew between hosts."""
    wandb: WandbSettings = field(default_factory=WandbSettings)
    """The job's W&B run, logged at the end: config, fingerprint, counts, skip reasons, preview, throughput and
    the dataset artifact referencing every shard (magiceraser.lineage); a W&B failure is a warning, never the job's."""

    def __post_init__(self) -> None:
        self.layout = LEGACY_LAYOUTS.get(self.layout, self.layout)
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.read_batch_size < 1:
            raise ValueError(f"read_batch_size must be >= 1, got {self.read_batch_size}")
        if self.task_num_cpus <= 0:
            raise ValueError(f"task_num_cpus must be > 0, got {self.task_num_cpus}")
        if self.num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus}")
        if self.max_restarts < 0 or self.max_task_retries < 0:
            raise ValueError("max_restarts and max_task_retries must be >= 0")
        if self.node_loss_retries < 0:
            raise ValueError(f"node_loss_retries must be >= 0, got {self.node_loss_retries}")
        if self.lost_actor_timeout_s < 0:
            raise ValueError(f"lost_actor_timeout_s must be >= 0, got {self.lost_actor_timeout_s}")
        if self.node_loss_settle_s < 0:
            raise ValueError(f"node_loss_settle_s must be >= 0, got {self.node_loss_settle_s}")
        if self.max_open_shards < 1:
            raise ValueError(f"max_open_shards must be >= 1, got {self.max_open_shards}")
        if self.progress_interval_s <= 0:
            raise ValueError(f"progress_interval_s must be > 0, got {self.progress_interval_s}")
        if self.lock_stale_s <= 0:
            raise ValueError(f"lock_stale_s must be > 0, got {self.lock_stale_s}")
