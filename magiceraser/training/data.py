"""OLRD shards -> training batches, as an explicit list of streaming stages (webdataset + fsspec).

Per DataLoader worker of each training process:

1. ``assign_shards``: the shard list is split by (rank, worker); with fewer shards than streams
   every stream samples from all shards (with its own seed), so every rank always sees data.
2. ``shard_draw``: shards are drawn with replacement forever (a resampled stream: no epochs, no
   rank ever runs dry, no end-of-epoch barrier); draw i is a pure function of (stream seed, i).
3. ``read_tar_samples`` (``magiceraser.olrd_samples``, the one OLRD reader): each shard is opened
   with fsspec (local, s3://, gs://, ...) and expanded into samples by webdataset; unreadable
   shards/members are logged and skipped.
4. optional phase-1 subset: keep a sample iff a hash of (seed, key) falls below the fraction.
5. ``shuffled_windows``: the samples of consecutive draws are gathered into windows of at least
   ``shuffle_buffer`` samples, each shuffled by a generator seeded with its first draw.
6. position: (first draw of the window, samples taken from it) is the data position saved in
   checkpoints; a resumed run reads that one window again and skips into it, so the cost of a
   resume does not grow with the step (shard and offset arithmetic, as mosaicml/streaming does).
7. ``make_example``: decode, crop containing the whole mask, resize, build the stock diffusers
   inpainting inputs, pick the prompt, tokenize. A corrupt sample is logged and skipped.
8. batching inside the worker, so each batch carries (worker, position) for checkpoints.

Geometric randomness (crop, mask jitter) is a function of (seed, sample key), so the latent cache
can store it; prompt choice is a function of (seed, rank, worker, position), so resuming replays it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from magiceraser.olrd_samples import CorruptSample, _member, decode_olrd, expand_urls, read_tar_samples
from magiceraser.prompts import learned_prompt

log = logging.getLogger(__name__)

# A worker that sees this many corrupt samples or empty shards in a row stops with an error
# instead of spinning forever on a dataset that cannot produce a batch.
MAX_CONSECUTIVE_FAILURES = 1000


# ----------------------------------------------------------------------------------------------
# Pure functions: shard assignment, hashing, crops, masks, prompts
# ----------------------------------------------------------------------------------------------


def assign_shards(urls: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """Shards read by stream (rank, worker): a disjoint split when there are enough, else all of them."""
    streams = world_size * num_workers
    index = rank * num_workers + worker
    if len(urls) >= streams:
        return list(urls[index::streams])
    return list(urls)


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts, identical in every process and Python version."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def in_subset(key: str, seed: int, fraction: float) -> bool:
    """Deterministic random subset membership of a sample key (phase-1 textual inversion)."""
    if fraction >= 1.0:
        return True
    return stable_seed("subset", seed, key) / 2**63 < fraction


def crop_box_containing(
    bbox: tuple[int, int, int, int], height: int, width: int, scale_min: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A crop (x0, y0, x1, y1), exclusive ends, that contains ``bbox`` and lies inside the image.

    Square with side in [max(mask extent, scale_min * short side), short side] when the mask fits
    in a square; otherwise the smallest rectangle spanning the mask and the short side (resizing
    then squeezes it, which keeps the whole mask, as required, at the cost of aspect).
    """
    x0, y0, x1, y1 = bbox
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"bbox {bbox} is empty or outside a {width}x{height} image")
    short = min(height, width)
    need = max(x1 - x0, y1 - y0)
    if need <= short:
        lo = max(need, int(np.ceil(scale_min * short)))
        side_x = side_y = int(rng.integers(lo, short + 1))
    else:
        side_x, side_y = min(width, max(need, short)), min(height, max(need, short))
    cx = int(rng.integers(max(0, x1 - side_x), min(x0, width - side_x) + 1))
    cy = int(rng.integers(max(0, y1 - side_y), min(y0, height - side_y) + 1))
    return cx, cy, cx + side_x, cy + side_y


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1), exclusive ends, of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def random_mask(size: int, rng: np.random.Generator, max_shapes: int = 4) -> np.ndarray:
    """A random inpainting mask (bool size x size) of rectangles, ellipses and thick strokes."""
    import cv2

    canvas = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = int(rng.integers(3))
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(max(2, size // 10), max(3, size // 2), 2))
        if kind == 0:
            cv2.rectangle(canvas, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), 255, -1)
        elif kind == 1:
            cv2.ellipse(canvas, (cx, cy), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, 255, -1)
        else:
            pts = np.cumsum(rng.integers(-size // 4, size // 4 + 1, (4, 2)), axis=0) + [cx, cy]
            thickness = max(1, int(rng.integers(size // 20 + 1, size // 8 + 2)))
            cv2.polylines(canvas, [pts.astype(np.int32).reshape(-1, 1, 2)], False, 255, thickness)
    if not canvas.any():  # every shape fell off the canvas
        canvas[size // 4 : size // 2, size // 4 : size // 2] = 255
    return canvas > 0


def choose_prompt(
    tags: Sequence[str], caption: str, token: str, learned_prob: float, rng: np.random.Generator, tag_choice: str = "first"
) -> tuple[str, bool]:
    """Prompt of one sample: ``learned_prompt(token, tag)`` with probability ``learned_prob``, else the caption.

    Returns (prompt, used_learned). A sample without caption always gets the learned prompt and
    one without tags gets "A photo of R*".
    """
    use_learned = rng.random() < learned_prob or not caption.strip()
    if not use_learned:
        return caption.strip(), False
    tag = None
    if tags:
        tag = tags[0] if tag_choice == "first" else tags[int(rng.integers(len(tags)))]
    return learned_prompt(token, tag), True


# ----------------------------------------------------------------------------------------------
# Streaming stages
# ----------------------------------------------------------------------------------------------


def shard_draw(shards: Sequence[str], stream_seed: int, draw: int) -> str:
    """The shard of draw number ``draw`` of a resampled stream (with replacement, forever).

    A pure function of (stream seed, draw), as in mosaicml/streaming: a resumed stream jumps to
    any draw without replaying the ones before it.
    """
    return shards[stable_seed("shard-draw", stream_seed, draw) % len(shards)]


def shuffled_windows(
    shards: Sequence[str],
    stream_seed: int,
    window_size: int,
    start: tuple[int, int] = (0, 0),
    keep: Any = None,
    max_empty_shards: int = 10,
) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
    """The samples of a resampled stream, shuffled in windows, each with its position.

    A window starting at draw ``w`` holds the samples of draws w, w+1, ... (each shard read in
    full, ``keep(sample)`` filtering them) until it has at least ``window_size``; it is shuffled
    by a generator seeded with (stream seed, w). The position after the j-th sample of window w is
    (w, j), and after its last sample (first draw of the next window, 0). A stream started at
    (w, j) reads window w again and skips j samples, so a resume
    costs one window of reading, whatever the step (the shuffle quality is that of a
    ``window_size`` buffer; ``window_size`` <= 1 keeps the shards' order).

    ``max_empty_shards`` shards in a row without a single sample raise RuntimeError (a stream over
    empty or unreadable shards would otherwise spin forever).
    """
    if not shards:
        raise ValueError("no shards to read")
    draw, skip = start
    empty_run = 0
    while True:
        window_start, window = draw, []
        while len(window) < max(1, window_size):
            url = shard_draw(shards, stream_seed, draw)
            draw += 1
            samples = list(read_tar_samples([url]))
            empty_run = 0 if samples else empty_run + 1
            if empty_run > max_empty_shards:
                raise RuntimeError(f"{empty_run} shards in a row gave no sample (last: {url}); check data.urls")
            window.extend(s for s in samples if keep is None or keep(s))
        if window_size > 1:
            random.Random(stable_seed("window", stream_seed, window_start)).shuffle(window)
        for j in range(skip, len(window)):
            # After a window's last sample the position is the next window's start, so a resume
            # there reads one window, not a finished one and then the next.
            yield ((window_start, j + 1) if j + 1 < len(window) else (draw, 0)), window[j]
        skip = 0


# ----------------------------------------------------------------------------------------------
# Sample -> training example
# ----------------------------------------------------------------------------------------------


@dataclass
class ExampleSpec:
    """How samples become examples (everything a DataLoader worker needs, picklable)."""

    resolution: int
    vae_scale_factor: int = 8
    mode: str = "olrd"
    crop_scale_min: float = 0.5
    mask_dilate_max: int = 0
    random_mask_max_boxes: int = 4
    seed: int = 0


class InpaintingInputs:
    """Stock ``StableDiffusionInpaintPipeline`` preprocessing of an image/mask pair (its own processors)."""

    def __init__(self, vae_scale_factor: int):
        from diffusers.image_processor import VaeImageProcessor

        # Exactly the two processors StableDiffusionInpaintPipeline.__init__ builds.
        self.vae_scale_factor = vae_scale_factor
        self.image_processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )

    def __call__(
        self, target: np.ndarray, condition: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int] | None, size: int
    ) -> dict[str, torch.Tensor]:
        """Tensors of one example: target I and masked Ĩ in [-1, 1], mask at latent size (as the pipeline)."""
        from PIL import Image

        kw = dict(height=size, width=size, crops_coords=box)
        target_t = self.image_processor.preprocess(Image.fromarray(target), **kw).float()
        cond_t = self.image_processor.preprocess(Image.fromarray(condition), **kw).float()
        mask_t = self.mask_processor.preprocess(Image.fromarray(mask.astype(np.uint8) * 255), **kw)
        # pipeline: masked_image = init_image * (mask_condition < 0.5)
        masked_t = cond_t * (mask_t < 0.5)
        # pipeline.prepare_mask_latents: F.interpolate(mask, size=latent size), default (nearest) mode
        lat = size // self.vae_scale_factor
        mask_latent = torch.nn.functional.interpolate(mask_t, size=(lat, lat))
        return dict(pixel_values=target_t[0], masked_pixel_values=masked_t[0], mask_latent=mask_latent[0])


def make_pixel_example(decoded: dict[str, Any], spec: ExampleSpec, inputs: InpaintingInputs) -> dict[str, Any]:
    """Crop/resize/mask one decoded sample into pixel-space training tensors (deterministic per key)."""
    import cv2

    rng = np.random.default_rng(stable_seed("geometry", spec.seed, decoded["key"]))
    original = decoded["original"]
    h, w = original.shape[:2]
    if spec.mode == "random_mask":
        short = min(h, w)
        side = int(rng.integers(int(np.ceil(spec.crop_scale_min * short)), short + 1))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        target = condition = original[y0 : y0 + side, x0 : x0 + side]
        mask = random_mask(side, rng, spec.random_mask_max_boxes)
        box = None
    else:
        target, condition, mask = original, decoded["blended"], decoded["mask"]
        box = crop_box_containing(mask_bbox(mask), h, w, spec.crop_scale_min, rng)
    if spec.mask_dilate_max > 0:
        r = int(rng.integers(0, spec.mask_dilate_max + 1))
        if r:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            mask = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    tensors = inputs(target, condition, mask, box, spec.resolution)
    return dict(key=decoded["key"], tags=decoded["tags"], caption=decoded["caption"], **tensors)


def decode_cached(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode a latent-cache sample (see latent_cache.py): latent distribution parameters + mask."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(_member(sample, "json"))
        arrays = {
            name: torch.from_numpy(np.load(io.BytesIO(_member(sample, f"{name}.npy")), allow_pickle=False)).float()
            for name in ("image_latent_params", "masked_latent_params", "mask_latent")
        }
    except CorruptSample:
        raise
    except Exception as exc:
        raise CorruptSample("bad_cache_entry", f"latent-cache sample {key} cannot be decoded: {exc}") from exc
    return dict(key=key, tags=list(meta.get("tags") or []), caption=str(meta.get("caption") or ""), **arrays)


# ----------------------------------------------------------------------------------------------
# The per-worker stream
# ----------------------------------------------------------------------------------------------


@dataclass
class StreamSpec:
    """Everything one process's training stream needs; the DataLoader pickles it to its workers."""

    urls: list[str]
    example: ExampleSpec
    batch_size: int
    tokenizer: Any
    token: str
    learned_prob: float = 0.5
    tag_choice: str = "first"
    shuffle_buffer: int = 1000
    rank: int = 0
    world_size: int = 1
    subset_fraction: float = 1.0
    cached: bool = False
    stream_name: str = "train"
    start_positions: dict[int, Sequence[int]] = field(default_factory=dict)
    """Per logical worker, the (window, offset) position to continue from (see ``shuffled_windows``)."""
    worker_offset: int = 0


class TrainStream(torch.utils.data.IterableDataset):
    """Infinite stream of batches; each batch carries the (logical worker, position) it ended at."""

    def __init__(self, spec: StreamSpec):
        super().__init__()
        self.spec = spec
        self._inputs: InpaintingInputs | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        spec = self.spec
        info = torch.utils.data.get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Rotating worker roles on resume keeps the DataLoader's round-robin batch order identical
        # to the uninterrupted run (its first batch always comes from physical worker 0).
        worker = (physical + spec.worker_offset) % num_workers
        seed = spec.example.seed
        shards = assign_shards(spec.urls, spec.rank, spec.world_size, worker, num_workers)
        stream_seed = stable_seed("stream", seed, spec.stream_name, spec.rank, worker)
        start = tuple(spec.start_positions.get(worker, (0, 0)))
        keep = _SubsetFilter(seed, spec.subset_fraction) if spec.subset_fraction < 1.0 else None
        samples = shuffled_windows(shards, stream_seed, spec.shuffle_buffer, start, keep, max_empty_shards=10 + 2 * len(shards))

        failures, batch = 0, []
        for position, sample in samples:
            try:
                example = self._example(sample, worker, position)
            except CorruptSample as exc:
                failures += 1
                log.warning("skipping corrupt sample (%s): %s", exc.reason, exc)
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{failures} corrupt samples in a row in {shards[:3]}...: check the shards") from exc
                continue
            failures = 0
            batch.append(example)
            if len(batch) == spec.batch_size:
                yield collate(batch, worker=worker, position=list(position))
                batch = []

    def _example(self, sample: dict[str, Any], worker: int, position: tuple[int, int]) -> dict[str, Any]:
        spec = self.spec
        if spec.cached:
            example = decode_cached(sample)
        else:
            if self._inputs is None:
                self._inputs = InpaintingInputs(spec.example.vae_scale_factor)
            example = make_pixel_example(decode_olrd(sample), spec.example, self._inputs)
        rng = np.random.default_rng(stable_seed("prompt", spec.example.seed, spec.stream_name, spec.rank, worker, *position))
        prompt, learned = choose_prompt(example["tags"], example["caption"], spec.token, spec.learned_prob, rng, spec.tag_choice)
        ids = spec.tokenizer(
            prompt, padding="max_length", max_length=spec.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids[0]
        example.update(prompt=prompt, learned=learned, input_ids=ids)
        return example


TENSOR_KEYS = (
    "pixel_values",
    "masked_pixel_values",
    "mask_latent",
    "image_latent_params",
    "masked_latent_params",
    "input_ids",
)


class _SubsetFilter:
    """Phase-1 subset membership of samples; gives up when far more were rejected in a row than
    the fraction explains (an empty subset would otherwise read shards forever)."""

    def __init__(self, seed: int, fraction: float):
        self.seed, self.fraction = seed, fraction
        self.limit = max(10_000, int(50 / fraction))
        self.rejected = 0

    def __call__(self, sample: dict[str, Any]) -> bool:
        if in_subset(sample["__key__"], self.seed, self.fraction):
            self.rejected = 0
            return True
        self.rejected += 1
        if self.rejected > self.limit:
            raise RuntimeError(
                f"no sample in {self.rejected} fell into the phase-1 subset (phases.textual_inversion_subset={self.fraction}); "
                "raise the fraction or add data"
            )
        return False


def collate(examples: list[dict[str, Any]], worker: int = 0, position: Sequence[int] = (0, 0)) -> dict[str, Any]:
    """Stack example tensors; keep keys, prompts and the learned-prompt flags as lists/tensors."""
    batch: dict[str, Any] = {k: torch.stack([e[k] for e in examples]) for k in TENSOR_KEYS if k in examples[0]}
    batch["learned"] = torch.tensor([bool(e["learned"]) for e in examples])
    batch["keys"] = [e["key"] for e in examples]
    batch["prompts"] = [e["prompt"] for e in examples]
    batch["worker"] = worker
    batch["position"] = position
    return batch


def make_loader(spec: StreamSpec, num_workers: int) -> torch.utils.data.DataLoader:
    """DataLoader over a TrainStream (batches are formed in the workers)."""
    return torch.utils.data.DataLoader(
        TrainStream(spec),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
        pin_memory=torch.cuda.is_available(),
    )


def read_first_samples(urls: Sequence[str], n: int) -> list[dict[str, Any]]:
    """The first ``n`` decodable OLRD samples of the shards in order (validation), corrupt ones skipped."""
    out = []
    for sample in read_tar_samples(expand_urls(urls, key="validation.urls")):
        try:
            out.append(decode_olrd(sample))
        except CorruptSample as exc:
            log.warning("validation: skipping corrupt sample (%s): %s", exc.reason, exc)
            continue
        if len(out) == n:
            break
    return out
