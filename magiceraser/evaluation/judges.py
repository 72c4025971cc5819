"""Success-rate judges for object removal: did the erased object really go?

Each judge gives one verdict per image, ``success`` (True = the object is judged gone), and the
number behind it. A method's success rate is the share of its images judged a success.

Detector judge (:func:`detector_verdict`, :class:`DetectorJudge`)
    Panoptic segmentation of the ERASED image. The region looked at is the erase mask dilated by
    ``DETECTOR_DILATION`` px (cv2's elliptical structuring element of size 2d+1, a rasterised disc:
    every pixel within d px of the mask is in, none beyond d + 0.5 px; regrowth that bleeds past
    the mask, and masks drawn a little tight, still count). The number is
    the share of the region's pixels covered by segments of the target class(es); the object is
    judged still there (failure) when that share reaches ``DETECTOR_THRESHOLD``:

        success = fraction < DETECTOR_THRESHOLD

    Defaults: 8 px and 0.1 — a tenth of the grown region may be the target class (a neighbour of
    the same class touching the ring, a sliver the segmenter puts across the border) before the
    erasure counts as failed. The target classes come from the pair's ``object_class`` through
    :func:`target_labels`: the class itself when it is a COCO *thing* class, otherwise any thing
    class (stuff is never looked for: an erased region is rightly filled with stuff — wall, grass,
    a table top — so finding stuff there says nothing about the object).

Vision-language judge (:class:`~magiceraser.evaluation.vlm_judge.VlmJudge`)
    LLaVA is shown the erased region with context (:func:`judge_crop`) and asked
    ``DEFAULT_VLM_PROMPT`` ("Is there a {object} in this image? Answer yes or no.") with the
    object's class (:func:`class_phrase`). The number is P(yes) from ONE next-token distribution
    at the answer position, renormalised over the yes and no tokens only
    (:func:`yes_probability`); success = P(yes) < ``threshold`` (default 0.5).

    The yes/no token ids (:func:`answer_token_id`) are the first token of each word as the tokenizer
    encodes it *in answer position*: the rendered prompt followed by " word", minus the prompt's own
    tokens. Encoding the bare word is wrong for some tokenizers: llava-hf/llava-1.5-7b-hf's Llama
    sentencepiece-BPE tokenizer answers with "▁Yes" after "ASSISTANT:"; ``encode("Yes")`` gives
    "▁Yes" only because the tokenizer prepends "▁" to a text's start, and ``encode(" Yes")`` gives
    "▁▁Yes" split into two tokens, neither of them "▁Yes", under the legacy tokenizer.json
    normaliser (Prepend("▁") + Replace(" ", "▁")) — transformers 5's own LlamaTokenizer (Metaspace,
    prepend_scheme "first") happens to give "▁Yes" for both — while a byte-level BPE tokenizer
    needs the space ("ĠYes", not "Yes"). The in-context encoding gives the generated token in
    every case. Words whose first answer tokens collide
    across the yes and no groups are refused (ValueError naming them); a group's duplicate ids are
    counted once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from magiceraser import coco
from magiceraser.panoptic import PanopticResult, PanopticSegmenter, label_lut

__all__ = [
    "DEFAULT_VLM_PROMPT",
    "DETECTOR_DILATION",
    "DETECTOR_THRESHOLD",
    "VLM_CONTEXT",
    "VLM_FALLBACK_PHRASE",
    "VLM_LOGPROBS",
    "VLM_THRESHOLD",
    "DetectorJudge",
    "answer_ids",
    "answer_token_id",
    "class_phrase",
    "detector_region",
    "detector_verdict",
    "judge_crop",
    "target_labels",
    "top_logprobs_to_logits",
    "vlm_verdict",
    "yes_probability",
]

# Detector judge: the erase mask grown by DETECTOR_DILATION px is the region; the object counts as
# still there when target-class segments cover at least DETECTOR_THRESHOLD of it.
DETECTOR_DILATION = 8
DETECTOR_THRESHOLD = 0.1

# Vision-language judge.
DEFAULT_VLM_PROMPT = "Is there a {object} in this image? Answer yes or no."
VLM_THRESHOLD = 0.5  # success when P(yes) < this
VLM_CONTEXT = 1.0  # crop = mask bbox grown by this x its size on every side
VLM_FALLBACK_PHRASE = "object"  # the prompt's object when the pair has no readable class
VLM_LOGPROBS = 20  # vLLM: top logprobs returned at the answer position (vLLM's default max_logprobs)


# --------------------------------------------------------------------------------------------------
# Detector judge
# --------------------------------------------------------------------------------------------------

def _class_lookup() -> dict[str, coco.Category]:
    """Lower-cased class name and tag_text form -> category (no two categories share a key)."""
    table: dict[str, coco.Category] = {}
    for cat in coco.COCO_PANOPTIC:
        for key in (cat.name.lower(), coco.tag_text(cat.name).lower()):
            other = table.setdefault(key, cat)
            if other is not cat:  # pragma: no cover - guards the taxonomy table
                raise AssertionError(f"{key!r} names both {other.name!r} and {cat.name!r}")
    return table


_BY_TEXT = _class_lookup()
_LABEL_ID = re.compile(r"^/[a-z]/\w+$")  # OpenImages / Freebase machine ids: "/m/04h7h"


def _coco_category(object_class: str | None) -> coco.Category | None:
    """The COCO panoptic category ``object_class`` names: exactly, else case-insensitively by name
    or readable form, the name itself also read through tag_text ("dining table-merged")."""
    if not object_class:
        return None
    if object_class in coco.BY_NAME:
        return coco.BY_NAME[object_class]
    text = " ".join(object_class.strip().lower().replace("_", " ").split())
    return _BY_TEXT.get(text) or _BY_TEXT.get(coco.tag_text(text))


def target_labels(object_class: str | None) -> frozenset[int] | None:
    """The COCO panoptic label(s) the detector judge looks for in the erased region.

    The class's label when ``object_class`` names a COCO *thing* class — exactly ("dining table"),
    case-insensitively ("Cat", an OpenImages name) or by its readable form (:func:`coco.tag_text`,
    also of the given name: "dining table-merged").
    None, meaning "any thing class", for everything else: no class, a label id ("/m/04h7h"), an
    OpenImages class outside COCO's things ("Mobile phone"), and COCO *stuff* classes — the erased
    region is meant to be filled with stuff, so stuff there is no evidence that the object remains.
    """
    cat = _coco_category(object_class)
    if cat is None or not cat.isthing:
        return None
    return frozenset({cat.label})


def detector_region(mask: np.ndarray, dilation: int = DETECTOR_DILATION) -> np.ndarray:
    """The judged region: ``mask`` dilated by cv2's (2d+1)-px elliptical kernel; d = 0 keeps the mask.

    The kernel is a rasterised disc: the region holds every pixel within Euclidean distance d of
    the mask and none farther than d + 0.5.
    """
    import cv2

    mask = np.asarray(mask).astype(bool)
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0, got {dilation}")
    if dilation == 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation + 1, 2 * dilation + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def detector_verdict(
    mask: np.ndarray,
    pan: PanopticResult,
    labels: frozenset[int] | None,
    dilation: int = DETECTOR_DILATION,
    threshold: float = DETECTOR_THRESHOLD,
) -> tuple[bool, float]:
    """(success, fraction) of one erased image from its panoptic segmentation ``pan``.

    ``fraction`` = share of the region (:func:`detector_region` of ``mask``) covered by segments
    whose label is in ``labels`` (any thing class when None); success = fraction < ``threshold``,
    so a fraction exactly at the threshold is a failure. Defaults: ``DETECTOR_DILATION`` px and
    ``DETECTOR_THRESHOLD`` (see the module docstring).
    """
    mask = np.asarray(mask).astype(bool)
    if mask.shape != pan.shape:
        raise ValueError(f"mask shape {mask.shape} differs from segmentation shape {pan.shape}")
    if not mask.any():
        raise ValueError("detector_verdict needs a non-empty mask")
    region = detector_region(mask, dilation)
    wanted = coco.THING_LABELS if labels is None else labels
    covered = label_lut(frozenset(wanted))[pan.label_map()] & region
    fraction = float(covered.sum()) / float(region.sum())
    return fraction < threshold, fraction


class DetectorJudge:
    """The detector judge over a panoptic segmenter (Mask2Former): ``judge(images, masks, classes)``."""

    def __init__(
        self, segmenter: PanopticSegmenter, dilation: int = DETECTOR_DILATION, threshold: float = DETECTOR_THRESHOLD
    ):
        if dilation < 0:
            raise ValueError(f"dilation must be >= 0, got {dilation}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.segmenter, self.dilation, self.threshold = segmenter, dilation, threshold

    def judge(
        self, images: list[np.ndarray], masks: list[np.ndarray], classes: Sequence[str | None]
    ) -> list[tuple[bool, float]]:
        """(success, fraction) per erased image; the images are segmented as one batch."""
        if not len(images) == len(masks) == len(classes):
            raise ValueError(f"got {len(images)} images, {len(masks)} masks and {len(classes)} classes")
        pans = self.segmenter.segment(list(images))
        return [
            detector_verdict(m, pan, target_labels(c), self.dilation, self.threshold)
            for m, pan, c in zip(masks, pans, classes)
        ]

    def __call__(self, image: np.ndarray, mask: np.ndarray, object_class: str | None) -> tuple[bool, float]:
        return self.judge([image], [mask], [object_class])[0]


# --------------------------------------------------------------------------------------------------
# Vision-language judge: pure parts
# --------------------------------------------------------------------------------------------------

def _window(lo: int, hi: int, side: int, size: int) -> tuple[int, int]:
    """A window of ``min(side, size)`` px centred on [lo, hi), shifted to lie inside [0, size)."""
    length = min(side, size)
    start = math.floor((lo + hi) / 2 - length / 2 + 0.5)
    start = min(max(start, 0), size - length)
    return start, start + length


def judge_crop(image: np.ndarray, mask: np.ndarray, context: float = VLM_CONTEXT) -> np.ndarray:
    """The masked region with context, as a uint8 crop of ``image``.

    The mask's bounding box (h x w) grown by ``context`` x its size on every side is
    (1 + 2·context)·h x (1 + 2·context)·w; the crop is the square of side
    round((1 + 2·context)·max(h, w)) centred on the box — so the vision tower's centre crop loses
    nothing — cut to the image's size on an axis where the image is smaller, and shifted (not
    shrunk) to lie inside the image. It always contains the whole mask.
    """
    image = np.asarray(image)
    mask = np.asarray(mask).astype(bool)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected an HxWxC uint8 image, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image size {image.shape[:2]}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("judge_crop needs a non-empty mask")
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    side = max(1, math.floor((1 + 2 * context) * max(y1 - y0, x1 - x0) + 0.5))
    top, bottom = _window(y0, y1, side, image.shape[0])
    left, right = _window(x0, x1, side, image.shape[1])
    return np.ascontiguousarray(image[top:bottom, left:right])


def class_phrase(object_class: str | None, fallback: str = VLM_FALLBACK_PHRASE) -> str:
    """Readable class text for the prompt.

    COCO panoptic classes (matched as :func:`target_labels` matches them) read as
    :func:`coco.tag_text` ("sky-other-merged" -> "sky", "wall-brick" -> "brick wall"); other names (OpenImages: "Cat", "Human face") lower-cased with
    spaces normalised; ``fallback`` when there is no class or only a label id ("/m/04h7h").
    """
    if object_class is None or not object_class.strip() or _LABEL_ID.match(object_class.strip()):
        return fallback
    cat = _coco_category(object_class)
    if cat is not None:
        return coco.tag_text(cat.name)
    return " ".join(object_class.replace("_", " ").split()).lower()


def yes_probability(yes_logits: np.ndarray, no_logits: np.ndarray) -> float:
    """P(yes) over the yes and no tokens together, in float64.

    softmax over the concatenated logits, summed over the yes tokens:
    exp(lse(yes)) / (exp(lse(yes)) + exp(lse(no))), lse = logsumexp of a group. Log-probabilities
    work as well as logits (a shared normaliser cancels).
    """
    yes = np.asarray(yes_logits, dtype=np.float64).ravel()
    no = np.asarray(no_logits, dtype=np.float64).ravel()
    if yes.size == 0 or no.size == 0:
        raise ValueError("yes_probability needs at least one yes and one no logit")
    lse_yes, lse_no = np.logaddexp.reduce(yes), np.logaddexp.reduce(no)
    p = float(np.exp(lse_yes - np.logaddexp(lse_yes, lse_no)))
    if math.isnan(p):
        raise ValueError(f"P(yes) is undefined for yes logits {yes} and no logits {no}")
    return p


def vlm_verdict(p_yes: float, threshold: float = VLM_THRESHOLD) -> bool:
    """Success = the object is judged absent: ``p_yes < threshold`` (at the threshold: failure)."""
    if math.isnan(p_yes):
        raise ValueError("p_yes is NaN")
    return p_yes < threshold


def top_logprobs_to_logits(top: Mapping[int, float], ids: Sequence[int]) -> np.ndarray:
    """Log-probabilities of ``ids`` from a top-k map (vLLM's per-position logprobs), float64.

    An id outside the top k is only known to be at most the smallest returned log-probability; it
    gets that bound. So P(yes) is exact when every yes and no token is in the top k, and otherwise
    errs towards 0.5 by at most the missing tokens' share; with none of them returned it is
    |yes ids| / (|yes ids| + |no ids|). Answering a yes/no question, LLaVA puts its yes and no
    tokens at the top, so the bound is rarely used.
    """
    if not top:
        raise ValueError("no logprobs were returned")
    floor = min(top.values())
    return np.array([top.get(i, floor) for i in ids], dtype=np.float64)


def answer_token_id(tokenizer, prompt_text: str, word: str) -> int:
    """The first token of ``word`` as the model would generate it right after ``prompt_text``.

    Encodes ``prompt_text + " " + word`` (no space added when the prompt already ends in
    whitespace) and ``prompt_text`` without special tokens and takes the first token past the
    prompt's. Raises ValueError when the word would merge with the prompt's last token.
    """
    sep = "" if prompt_text[-1:].isspace() else " "
    base = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(prompt_text + sep + word, add_special_tokens=False)["input_ids"])
    if len(full) <= len(base) or full[: len(base)] != base:
        raise ValueError(f"the answer {word!r} does not tokenize apart from the end of the prompt {prompt_text[-20:]!r}")
    return int(full[len(base)])


def answer_ids(tokenizer, prompt_text: str, yes_words: Sequence[str], no_words: Sequence[str]):
    if not yes_words or not no_words:
        raise ValueError("the VLM judge needs at least one yes word and one no word")
    yes = {w: answer_token_id(tokenizer, prompt_text, w) for w in yes_words}
    no = {w: answer_token_id(tokenizer, prompt_text, w) for w in no_words}
    clashes = [(y, n, i) for y, i in yes.items() for n, j in no.items() if i == j]
    if clashes:
        text = "; ".join(
            f"yes word {y!r} and no word {n!r} share the first answer token "
            f"{tokenizer.convert_ids_to_tokens(i)!r} (id {i})" for y, n, i in clashes
        )
        raise ValueError(f"{text}: choose yes/no words whose first tokens differ for this tokenizer")
    return tuple(dict.fromkeys(yes.values())), tuple(dict.fromkeys(no.values()))
