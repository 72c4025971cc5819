"""Shared foundation: taxonomy, panoptic pure functions, prompts, atomic writes, CLI dispatch."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from magiceraser import coco, panoptic
from magiceraser.atomic import atomic_directory, atomic_open, atomic_write_json, remove_stale_temporaries
from magiceraser.panoptic import LABEL_MASK, LABEL_NEG, LABEL_POS, PanopticResult, Segment
from magiceraser.prompts import DEFAULT_TOKEN, caption_question, learned_prompt


def test_taxonomy_matches_coco_panoptic():
    assert coco.NUM_CLASSES == 133
    assert len(coco.THING_LABELS) == 80 and len(coco.STUFF_LABELS) == 53
    assert [c.label for c in coco.COCO_PANOPTIC] == list(range(133))
    assert len({c.coco_id for c in coco.COCO_PANOPTIC}) == 133
    # Things are COCO ids 1..90, stuff 92..200; every thing precedes every stuff label.
    assert max(c.coco_id for c in coco.COCO_PANOPTIC if c.isthing) == 90
    assert min(c.coco_id for c in coco.COCO_PANOPTIC if not c.isthing) == 92
    assert coco.BACKGROUND_LABELS <= coco.STUFF_LABELS
    assert coco.BY_NAME["grass-merged"].label in coco.BACKGROUND_LABELS
    assert coco.BY_NAME["table-merged"].label not in coco.BACKGROUND_LABELS


@pytest.mark.parametrize(
    "name, text",
    [("sky-other-merged", "sky"), ("grass-merged", "grass"), ("wall-brick", "brick wall"),
     ("door-stuff", "door"), ("playingfield", "playing field"), ("person", "person"),
     ("water-other", "water"), ("floor-wood", "wood floor")],
)
def test_tag_text(name, text):
    assert coco.tag_text(name) == text


def _scene() -> PanopticResult:
    """10x10: top half sky (id 1), bottom-left grass (id 2), bottom-right table (id 3), a dog (id 4)."""
    seg = np.zeros((10, 10), np.int32)
    seg[:5] = 1
    seg[5:, :5] = 2
    seg[5:, 5:] = 3
    seg[6:8, 1:3] = 4
    segs = [
        Segment(1, coco.BY_NAME["sky-other-merged"].label),
        Segment(2, coco.BY_NAME["grass-merged"].label),
        Segment(3, coco.BY_NAME["table-merged"].label),
        Segment(4, coco.BY_NAME["dog"].label),
    ]
    return PanopticResult(seg, segs)


def test_masks_and_tags_by_hand():
    pan = _scene()
    things = panoptic.thing_mask(pan)
    assert things.sum() == 4 and things[6:8, 1:3].all()
    bg = panoptic.background_mask(pan)
    assert bg.sum() == 50 + 25 - 4  # sky + grass minus the dog; the table is not background
    region = np.zeros((10, 10), bool)
    region[3:10, 0:10] = True  # 20 sky, 21 grass, 25 table, 4 dog
    assert panoptic.background_tags(pan, region) == ["grass-merged", "sky-other-merged"]
    assert panoptic.background_tags(pan, np.zeros((10, 10), bool)) == []


def test_dominant_tag_uses_the_ring_around_the_mask():
    pan = _scene()
    mask = np.zeros((10, 10), bool)
    mask[6:8, 1:3] = True  # the dog, surrounded by grass
    assert panoptic.dominant_background_tag(pan, mask, ring=1) == "grass-merged"
    empty = PanopticResult(np.zeros((10, 10), np.int32), [])
    assert panoptic.dominant_background_tag(empty, mask, ring=1) is None


def test_refocus_labels():
    pan = _scene()
    mask = np.zeros((10, 10), bool)
    mask[0:2, 0:2] = True
    labels = panoptic.refocus_labels(mask, pan)
    assert labels[0, 0] == LABEL_MASK and labels[3, 3] == LABEL_POS  # sky
    assert labels[9, 9] == LABEL_NEG and labels[6, 1] == LABEL_NEG  # table, dog
    assert (labels == LABEL_MASK).sum() == 4
    no_seg = panoptic.refocus_labels(mask, None)
    assert set(np.unique(no_seg)) == {LABEL_MASK, LABEL_POS}
    with pytest.raises(ValueError, match="shape"):
        panoptic.refocus_labels(np.zeros((5, 5), bool), pan)


def test_regrowth_fraction():
    pan = _scene()
    mask = np.zeros((10, 10), bool)
    mask[6:8, 0:4] = True  # 8 pixels, 4 of them the dog
    assert panoptic.regrowth_fraction(mask, pan) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        panoptic.regrowth_fraction(np.zeros((10, 10), bool), pan)


def test_prompts():
    assert learned_prompt(DEFAULT_TOKEN, "grass-merged") == f"A photo of {DEFAULT_TOKEN} grass"
    assert learned_prompt("<t>", None) == "A photo of <t>"
    assert caption_question(["grass-merged", "gravel"]) == "Describe the grass and gravel in the image."
    assert caption_question(["sky-other-merged", "sea", "sand"]) == "Describe the sky, sea and sand in the image."


def test_atomic_writes_leave_nothing_half_done(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("partial")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"x": 1}
    assert os.listdir(tmp_path) == ["a.json"]
    with atomic_directory(tmp_path / "d") as d:
        (d / "f").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "d") as d:
            (d / "f").write_text("2")
            raise RuntimeError("killed")
    assert (tmp_path / "d" / "f").read_text() == "1"
    # Same permissions as a plain open() would give (not mkstemp's 0600).
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert (target.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)
    plain.unlink()
    (tmp_path / ".tmp-leftover").write_text("x")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".tmp-leftover"]


def test_cli_help_and_unknown_command(capsys):
    from magiceraser.cli import COMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, magiceraser, magiceraser.cli, magiceraser.config, magiceraser.panoptic; " \
           "print(sorted(m for m in ('torch', 'ray', 'diffusers', 'transformers', 'wandb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
