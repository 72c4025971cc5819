"""Typed config of ``magiceraser evaluate`` (one dataclass per component, loaded from YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from magiceraser.evaluation.cfd import DEFAULT_DINOV2
from magiceraser.evaluation.judges import (
    DEFAULT_VLM_PROMPT,
    DETECTOR_DILATION,
    DETECTOR_THRESHOLD,
    VLM_CONTEXT,
    VLM_FALLBACK_PHRASE,
    VLM_THRESHOLD,
)
from magiceraser.evaluation.methods import MethodConfig
from magiceraser.evaluation.remove import DEFAULT_SAM
from magiceraser.keys import file_name_key
from magiceraser.models.captioner import DEFAULT_LLAVA
from magiceraser.wandb_runs import WandbSettings


@dataclass
class DatasetConfig:
    name: str = "olrd"
    """Label in the results table (e.g. RealHM, COCO, Open-Images); also the output folder name."""
    kind: Literal["realhm", "olrd_shards", "coco_panoptic", "openimages", "rorem", "removalbench", "folders"] = "olrd_shards"
    """Which reader builds the pairs (see magiceraser.evaluation.pairs): the paper's sources, RORem's test set,
    OmniEraser's RemovalBench, or plain input/ mask/ [target/] folders (no target: reference-free metrics only)."""
    path: str = ""
    """realhm, rorem, removalbench, folders: dataset root; olrd_shards: directory or glob of .tar shards;
    coco/openimages: image folder."""
    realhm_layout: Literal["auto", "folders", "ssh"] = "auto"
    """RealHM layout: composite/ mask/ gt/ folders, or the archive as distributed (ssh)."""
    panoptic_json: str = ""
    """coco_panoptic: panoptic_{split}.json."""
    panoptic_dir: str = ""
    """coco_panoptic: folder of the panoptic PNGs."""
    masks_csv: str = ""
    """openimages: the *-annotations-object-segmentation.csv file."""
    masks_dir: str = ""
    """openimages: folder holding the extracted mask PNGs (MaskPath names)."""
    class_descriptions: str = ""
    """openimages: optional class-descriptions CSV (label id -> name) for the pair metadata."""
    segmenter: str = ""
    """openimages: optional panoptic segmenter for background stuff (default: the un-annotated region)."""
    num_pairs: int = 200
    """Pairs to build or read (0 = all); the paper uses 200 for COCO and OpenImages."""
    seed: int = 0
    """Seed of the image order and of the OLRD shift (same pairs on every machine)."""
    min_long_side: int = 0
    """Only images whose long side is above this (paper: "side resolution higher than 512" for
    COCO/OpenImages; COCO photos are mostly 640x480, so it can only mean the long side)."""

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\"):
            raise ValueError(f"name: {self.name!r} must be a non-empty label without path separators")
        if not self.path:
            raise ValueError(f"path: dataset {self.name!r} needs a path (root folder, shard glob or image folder)")
        if self.kind == "coco_panoptic" and not (self.panoptic_json and self.panoptic_dir):
            raise ValueError("panoptic_json: coco_panoptic needs panoptic_json and panoptic_dir")
        if self.kind == "openimages" and not (self.masks_csv and self.masks_dir):
            raise ValueError("masks_csv: openimages needs masks_csv and masks_dir")
        if self.num_pairs < 0:
            raise ValueError(f"num_pairs: must be >= 0 (0 = all), got {self.num_pairs}")
        if self.min_long_side < 0:
            raise ValueError(f"min_long_side: must be >= 0, got {self.min_long_side}")


@dataclass
class MetricsConfig:
    masked: bool = True
    """Also report PSNR/SSIM/LPIPS over the masked region (beyond the paper)."""
    lpips: bool = False
    """LPIPS (AlexNet) through torchmetrics; needs AlexNet weights locally."""
    lpips_alexnet_weights: str = ""
    """torchvision's alexnet-owt-7be5be79.pth; empty: the torch hub cache."""
    fid: bool = False
    """FID (InceptionV3, torch-fidelity weights) over each dataset/method set."""
    fid_inception_weights: str = ""
    """weights-inception-2015-12-05-6726825d.pth; empty: the torch hub cache."""
    regrowth: bool = False
    """Re-generation rate: share of mask pixels a thing segment covers after erasing."""
    segmenter: str = "facebook/mask2former-swin-large-coco-panoptic"
    """Panoptic segmenter (Mask2Former id or directory) of the erased images: the re-generation rate, CFD's
    segments and the detector judge."""
    remove: bool = False
    """ReMOVE (reference-free): cosine of SAM features inside vs. outside the mask, on a square crop around it."""
    remove_model: str = DEFAULT_SAM
    """SAM checkpoint for ReMOVE (Hub id or directory; transformers' SamModel format)."""
    cfd: bool = False
    """CFD (OmniPaint, reference-free): DINOv2 context coherence + invented objects; segments from ``segmenter``."""
    cfd_model: str = DEFAULT_DINOV2
    """DINOv2 checkpoint for CFD (Hub id or directory)."""
    judge_detector: bool = False
    """Success rate, detector judge: the removed object's class is not found by ``segmenter`` in the dilated mask."""
    judge_detector_dilation: int = DETECTOR_DILATION
    """Pixels the mask is dilated by before looking for the object (at the letterboxed size)."""
    judge_detector_threshold: float = DETECTOR_THRESHOLD
    """The object counts as found when its class covers at least this share of the dilated region."""
    judge_vlm: bool = False
    """Success rate, vision-language judge: LLaVA asked whether the object is still in the masked region."""
    judge_vlm_model: str = DEFAULT_LLAVA
    """LLaVA checkpoint of the judge (Hub id or directory)."""
    judge_vlm_backend: Literal["transformers", "vllm"] = "transformers"
    """transformers (any device) or vllm (GPU, the ``vllm`` extra)."""
    judge_vlm_prompt: str = DEFAULT_VLM_PROMPT
    """The question; ``{object}`` is replaced by the pair's object class (or ``judge_vlm_fallback_class``)."""
    judge_vlm_threshold: float = VLM_THRESHOLD
    """The object counts as present when P(yes) >= this (P(yes) from the yes/no tokens' logits)."""
    judge_vlm_context: float = VLM_CONTEXT
    """Context around the mask shown to the judge: its bounding box grown by this many times its size on each side."""
    judge_vlm_fallback_class: str = VLM_FALLBACK_PHRASE
    """What the question names when a pair's metadata has no object class."""

    def __post_init__(self) -> None:
        if (self.regrowth or self.cfd or self.judge_detector) and not self.segmenter:
            raise ValueError("segmenter: the re-generation rate, CFD and the detector judge need a panoptic segmenter")
        if self.remove and not self.remove_model:
            raise ValueError("remove_model: ReMOVE needs a SAM checkpoint (Hub id or directory)")
        if self.cfd and not self.cfd_model:
            raise ValueError("cfd_model: CFD needs a DINOv2 checkpoint (Hub id or directory)")
        if self.judge_vlm and not self.judge_vlm_model:
            raise ValueError("judge_vlm_model: the vision-language judge needs a LLaVA checkpoint")
        if self.judge_detector_dilation < 0:
            raise ValueError(f"judge_detector_dilation: must be >= 0, got {self.judge_detector_dilation}")
        if not 0.0 < self.judge_detector_threshold <= 1.0:
            raise ValueError(f"judge_detector_threshold: must be in (0, 1], got {self.judge_detector_threshold}")
        if not 0.0 < self.judge_vlm_threshold < 1.0:
            raise ValueError(f"judge_vlm_threshold: must be in (0, 1), got {self.judge_vlm_threshold}")
        if self.judge_vlm_context < 0:
            raise ValueError(f"judge_vlm_context: must be >= 0, got {self.judge_vlm_context}")
        if "{object}" not in self.judge_vlm_prompt:
            raise ValueError(f"judge_vlm_prompt: must contain {{object}} (the removed object's class), got {self.judge_vlm_prompt!r}")


@dataclass
class BootstrapConfig:
    resamples: int = 1000
    """Bootstrap resamples over images for every interval (0 = no intervals, means only)."""
    confidence: float = 0.95
    """Confidence level of the intervals."""
    seed: int = 0
    """Seed of the resamples (the same images are drawn for every metric and method, so comparisons are paired)."""
    baseline: str = ""
    """Method every other method is compared with (paired bootstrap of the difference); empty: the first method."""

    def __post_init__(self) -> None:
        if self.resamples < 0:
            raise ValueError(f"resamples: must be >= 0 (0 = no intervals), got {self.resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence: must be in (0, 1), got {self.confidence}")


@dataclass
class EvalConfig:
    out_dir: str = "runs/eval"
    """Where pairs, erased images, per-image metrics, tables and grids go (a rerun resumes here)."""
    size: int = 512
    """Letterbox size: long side scaled to it, short side zero-padded (paper: 512)."""
    datasets: list[DatasetConfig] = field(default_factory=list)
    """Datasets to evaluate on (table rows are grouped by dataset)."""
    methods: list[MethodConfig] = field(default_factory=list)
    """Methods to compare (each runs where its weights are available)."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Which metrics to compute."""
    device: str = "auto"
    """cuda, cpu or auto (cuda when available)."""
    dtype: str = ""
    """Diffusion dtype (float16 / bfloat16 on GPU); empty: the pipeline's default."""
    grid_cases: int = 4
    """Best and worst cases (by PSNR) shown in each grid; 0 = no grids."""
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    """Confidence intervals of every cell and the paired comparison with a baseline method."""
    wandb: WandbSettings = field(default_factory=WandbSettings)
    """The evaluation's W&B run: the results, comparisons and per-image tables, using the model artifact of
    every method with a trained_dir (magiceraser.lineage)."""

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size: must be >= 32, got {self.size}")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets: names must be unique, got {names}")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"methods: names must be unique, got {names}")
        _check_one_folder_each("datasets", [d.name for d in self.datasets])
        _check_one_folder_each("methods", [m.name for m in self.methods])
        _check_grid_names([d.name for d in self.datasets], [m.name for m in self.methods])
        if self.dtype and self.dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"dtype: {self.dtype!r} is not one of float16, bfloat16, float32")
        if self.bootstrap.baseline and self.bootstrap.baseline not in names:
            raise ValueError(f"bootstrap.baseline: {self.bootstrap.baseline!r} is not one of the methods {names}")
        if self.grid_cases < 0:
            raise ValueError(f"grid_cases: must be >= 0, got {self.grid_cases}")


def _check_one_folder_each(field_name: str, names: list[str]) -> None:
    """Labels become folder names through ``file_name_key``; two labels on one folder would share one
    cache (each run discarding the other's) and mix their grids. Case is ignored, as it is on
    macOS and Windows file systems."""
    seen: dict[str, str] = {}
    for name in names:
        folder = file_name_key(name)
        other = seen.setdefault(folder.casefold(), name)
        if other != name:
            raise ValueError(f"{field_name}: names {other!r} and {name!r} both map to the output folder "
                             f"{folder!r}; rename one of them")


def _check_grid_names(datasets: list[str], methods: list[str]) -> None:
    """Grid files are ``<dataset>__<method>__{best,worst}.png``; ``__`` inside a label could make
    two (dataset, method) pairs write one file."""
    seen: dict[str, tuple[str, str]] = {}
    for ds in datasets:
        for m in methods:
            stem = grid_stem(ds, m)
            other = seen.setdefault(stem.casefold(), (ds, m))
            if other != (ds, m):
                raise ValueError(f"methods: ({other[0]!r}, {other[1]!r}) and ({ds!r}, {m!r}) both write the grids "
                                 f"{stem}__*.png; rename a dataset or method so no label holds '__'")


def grid_stem(dataset: str, method: str) -> str:
    """File-name stem of a (dataset, method) pair's grids."""
    return f"{file_name_key(dataset)}__{file_name_key(method)}"
