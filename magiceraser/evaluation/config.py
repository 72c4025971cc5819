"""Typed config of ``magiceraser evaluate`` (one dataclass per component, loaded from YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from magiceraser.evaluation.methods import MethodConfig
from magiceraser.keys import file_name_key


@dataclass
class DatasetConfig:
    name: str = "olrd"
    """Label in the results table (e.g. RealHM, COCO, Open-Images); also the output folder name."""
    kind: Literal["realhm", "olrd_shards", "coco_panoptic", "openimages"] = "olrd_shards"
    """Which reader builds the pairs (see magiceraser.evaluation.pairs)."""
    path: str = ""
    """realhm: dataset root; olrd_shards: directory or glob of .tar shards; coco/openimages: image folder."""
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
    regrowth_segmenter: str = "facebook/mask2former-swin-large-coco-panoptic"
    """Panoptic segmenter for the re-generation rate (Mask2Former id or directory)."""

    def __post_init__(self) -> None:
        if self.regrowth and not self.regrowth_segmenter:
            raise ValueError("regrowth_segmenter: the re-generation rate needs a panoptic segmenter")


@dataclass
class WandbConfig:
    enabled: bool = False
    """Log the results and per-image tables to Weights & Biases."""
    project: str = "magiceraser-eval"
    """W&B project."""
    mode: Literal["online", "offline", "disabled"] = "offline"
    """W&B mode (offline writes under the output directory)."""
    run_name: str = ""
    """W&B run name (default: the output folder name)."""


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
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Optional W&B table."""

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
