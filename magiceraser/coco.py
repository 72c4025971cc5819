"""The COCO panoptic taxonomy used by Mask2Former (facebook/mask2former-swin-large-coco-panoptic).

133 categories: 80 "thing" and 53 "stuff" classes. ``COCO_PANOPTIC`` lists them in the order of
the model's contiguous label ids 0..132, with the original COCO category ids (used by the COCO
panoptic annotation format) alongside.

``BACKGROUND_STUFF`` is the project's decision (docs/method.md, "Background stuff"): stuff classes
that are scenery an object can stand on or in front of (ground, water, vegetation, sky, walls,
floors, buildings). Object-like stuff (table, shelf, pillow, food, ...) is not background: an
object pasted there is not on "background", and such pixels count as negative in the refocus.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    label: int  # contiguous model label id, 0..132
    coco_id: int  # original COCO category id (panoptic annotation format)
    name: str
    isthing: bool


_THINGS = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
]
_STUFF = [
    (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"),
    (109, "curtain"), (112, "door-stuff"), (118, "floor-wood"), (119, "flower"), (122, "fruit"),
    (125, "gravel"), (128, "house"), (130, "light"), (133, "mirror-stuff"), (138, "net"),
    (141, "pillow"), (144, "platform"), (145, "playingfield"), (147, "railroad"), (148, "river"),
    (149, "road"), (151, "roof"), (154, "sand"), (155, "sea"), (156, "shelf"), (159, "snow"),
    (161, "stairs"), (166, "tent"), (168, "towel"), (171, "wall-brick"), (175, "wall-stone"),
    (176, "wall-tile"), (177, "wall-wood"), (178, "water-other"), (180, "window-blind"),
    (181, "window-other"), (184, "tree-merged"), (185, "fence-merged"), (186, "ceiling-merged"),
    (187, "sky-other-merged"), (188, "cabinet-merged"), (189, "table-merged"),
    (190, "floor-other-merged"), (191, "pavement-merged"), (192, "mountain-merged"),
    (193, "grass-merged"), (194, "dirt-merged"), (195, "paper-merged"), (196, "food-other-merged"),
    (197, "building-other-merged"), (198, "rock-merged"), (199, "wall-other-merged"),
    (200, "rug-merged"),
]

COCO_PANOPTIC: tuple[Category, ...] = tuple(
    [Category(i, cid, name, True) for i, (cid, name) in enumerate(_THINGS)]
    + [Category(len(_THINGS) + i, cid, name, False) for i, (cid, name) in enumerate(_STUFF)]
)
NUM_CLASSES = len(COCO_PANOPTIC)
BY_NAME: dict[str, Category] = {c.name: c for c in COCO_PANOPTIC}
BY_COCO_ID: dict[int, Category] = {c.coco_id: c for c in COCO_PANOPTIC}
THING_LABELS: frozenset[int] = frozenset(c.label for c in COCO_PANOPTIC if c.isthing)
STUFF_LABELS: frozenset[int] = frozenset(c.label for c in COCO_PANOPTIC if not c.isthing)

BACKGROUND_STUFF_NAMES: tuple[str, ...] = (
    "bridge", "floor-wood", "flower", "gravel", "house", "platform", "playingfield", "railroad",
    "river", "road", "roof", "sand", "sea", "snow", "stairs", "wall-brick", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "floor-other-merged", "pavement-merged", "mountain-merged", "grass-merged",
    "dirt-merged", "building-other-merged", "rock-merged", "wall-other-merged", "rug-merged",
)
BACKGROUND_LABELS: frozenset[int] = frozenset(BY_NAME[n].label for n in BACKGROUND_STUFF_NAMES)

_SUFFIXES = ("-other-merged", "-merged", "-other", "-stuff")
_MATERIAL_FIRST = {"wall", "floor", "window", "water"}


def tag_text(name: str) -> str:
    """Human wording of a category name for prompts: 'sky-other-merged' -> 'sky', 'wall-brick' -> 'brick wall'."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if "-" in name:
        head, tail = name.split("-", 1)
        if head in _MATERIAL_FIRST:
            return f"{tail} {head}"
        return name.replace("-", " ")
    if name == "playingfield":
        return "playing field"
    return name


def id2label() -> dict[int, str]:
    """The ``id2label`` mapping of the Mask2Former COCO panoptic checkpoint."""
    return {c.label: c.name for c in COCO_PANOPTIC}
