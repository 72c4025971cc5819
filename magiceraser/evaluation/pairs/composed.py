"""What the composed sources (COCO panoptic, OpenImages) share: a seeded image order and one call
of the data engine's ``compose`` (the same shift-and-blend as the training data) per pair."""

from __future__ import annotations

from typing import Any

import numpy as np

from magiceraser.evaluation.pairs import PairOrSkip, PairSkip, check_pair


def moved_segment_id(pan, composed) -> int:
    """The id of the segment ``compose`` moved: its pixels are the pasted mask shifted back by the offset."""
    ys, xs = np.nonzero(composed.mask)
    dx, dy = composed.offset
    return int(pan.segment_map[ys[0] - dy, xs[0] - dx])


def compose_pair(key: str, image: np.ndarray, pan, seed: int, compose_cfg, extra_meta: dict,
                 object_meta: dict[int, dict[str, Any]] | None = None) -> PairOrSkip:
    """Compose one OLRD pair; ``object_meta``: segment id -> metadata of that object (overrides the COCO class)."""
    from magiceraser.datasets.compose import ComposeSkip, compose, rng_for

    try:
        c = compose(image, pan, rng_for(key, seed), compose_cfg)
    except ComposeSkip as exc:
        return PairSkip(key, "compose_skip", getattr(exc, "reason", str(exc)))
    from magiceraser import coco

    meta = {"object_class": coco.COCO_PANOPTIC[c.object_label].name, "offset": list(c.offset), "tags": list(c.tags)}
    if object_meta is not None:
        meta.update(object_meta.get(moved_segment_id(pan, c), {}))
    meta.update(extra_meta)
    # The blended copy is the input, the untouched scene the ground truth (docs/method.md part 1, OLRD).
    return check_pair(key, np.asarray(c.blended, np.uint8), np.asarray(c.mask, bool), image, meta)


def seeded_order(items: list[str], seed: int) -> list[str]:
    """A seeded permutation of sorted ``items`` (the same list for the same seed on any machine)."""
    items = sorted(items)
    perm = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in perm]
