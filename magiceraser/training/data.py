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
7. ``examples.make_pixel_example``: decode, crop containing the whole mask, resize, build the
   stock diffusers inpainting inputs; then pick the prompt (``sampling.choose_prompt``) and
   tokenize. A corrupt sample is logged and skipped.
8. batching inside the worker, so each batch carries (worker, position) for checkpoints.

Geometric randomness (crop, mask jitter) is a function of (seed, sample key), so the latent cache
can store it; prompt choice is a function of (seed, rank, worker, position), so resuming replays it.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from magiceraser.olrd_samples import CorruptSample, decode_olrd, expand_urls, read_tar_samples
from magiceraser.training.examples import ExampleSpec, InpaintingInputs, decode_cached, make_pixel_example
from magiceraser.training.sampling import choose_prompt, in_subset, stable_seed

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


def make_loader(spec: StreamSpec, num_workers: int, ignore_signals: Sequence[str] = ()) -> torch.utils.data.DataLoader:
    """DataLoader over a TrainStream (batches are formed in the workers).

    ``ignore_signals``: signals the worker processes ignore (the trainer's preemption signals,
    which the main process handles; see ``preemption.ignore_in_worker``).
    """
    return torch.utils.data.DataLoader(
        TrainStream(spec),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=functools.partial(_ignore_in_worker, tuple(ignore_signals)) if num_workers and ignore_signals else None,
    )


def stop_loader(batches: Any) -> None:
    """Shut a loader iterator's worker processes down now (a generator wrapping one: close it).

    They ignore the preemption signals (a signal to the process group must not kill them
    mid-step), so they cannot be left to the interpreter's exit, which stops leftover children
    with SIGTERM; a worker that does not join in time gets SIGTERM from torch's shutdown, which
    it ignores too, so it is killed.
    """
    shutdown = getattr(batches, "_shutdown_workers", None) or getattr(batches, "close", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(batches, "_workers", None) or []:
        if worker.is_alive():
            worker.kill()


def _ignore_in_worker(names: tuple[str, ...], worker_id: int) -> None:
    from magiceraser.training.preemption import ignore_in_worker

    ignore_in_worker(names)


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
