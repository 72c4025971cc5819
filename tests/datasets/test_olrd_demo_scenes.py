"""Demo scenes: real skimage photos/textures with exact COCO panoptic annotations; erase example."""

from __future__ import annotations

import numpy as np

from magiceraser import coco
from magiceraser.datasets.coco_panoptic import CocoPanopticAnnotations
from magiceraser.datasets.demo_scenes import main, make_scene
from magiceraser.imageio import decode_image, decode_mask


def test_demo_scenes_are_deterministic_and_annotated(tmp_path):
    assert main([str(tmp_path / "s"), "--num-scenes", "3"]) == 0
    out = tmp_path / "s"
    ann = CocoPanopticAnnotations(out / "panoptic.json")
    assert ann.file_names() == ["scene-00.png", "scene-01.png", "scene-02.png"]
    for i, name in enumerate(ann.file_names()):
        image = decode_image(out / "images" / name)
        pan = ann.lookup(name)
        assert pan.shape == image.shape[:2]
        assert (pan.segment_map > 0).all()  # every pixel labelled
        assert any(s.isthing for s in pan.segments) and any(s.label in coco.BACKGROUND_LABELS for s in pan.segments)
        again, seg, _ = make_scene(i)
        np.testing.assert_array_equal(again, image)  # PNG is lossless and the scene deterministic
        np.testing.assert_array_equal(seg, pan.segment_map)
    image = decode_image(out / "erase" / "image.png")
    mask = decode_mask(out / "erase" / "mask.png")
    assert image.shape == (700, 1000, 3) and mask.shape == (700, 1000)
    assert 0.01 < mask.mean() < 0.2 and not mask[0].any() and not mask[-1].any()
