"""Each backend's real loading code on the tiny models (and the COCO panoptic format)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from magiceraser import coco
from magiceraser.panoptic import Segment


def _images(n=2, h=120, w=160):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_tiny_mask2former_files_and_label_map(tiny_mask2former):
    cfg = json.loads((tiny_mask2former / "config.json").read_text())
    assert cfg["architectures"] == ["Mask2FormerForUniversalSegmentation"]
    assert {int(k): v for k, v in cfg["id2label"].items()} == coco.id2label()
    assert (tiny_mask2former / "preprocessor_config.json").is_file()


def test_mask2former_segmenter_fuses_stuff_and_maps_labels(tiny_mask2former):
    import torch

    from magiceraser.models.segmenter import Mask2FormerSegmenter

    seg = Mask2FormerSegmenter(str(tiny_mask2former), device="cpu", batch_size=2, mask_threshold=0.0,
                               overlap_mask_area_threshold=0.0)
    images = _images(3)
    head = seg.model.class_predictor  # force every query to one class to get a known answer
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-20.0)
        head.bias[coco.BY_NAME["grass-merged"].label] = 20.0
    pans = seg.segment(images)
    assert len(pans) == 3
    for pan in pans:  # stuff: every query is grass, fused into a single segment over the image
        assert pan.shape == (120, 160)
        assert [s.label for s in pan.segments] == [coco.BY_NAME["grass-merged"].label]
        assert (pan.segment_map == pan.segments[0].id).all()
    with torch.no_grad():
        head.bias.fill_(-20.0)
        head.bias[coco.BY_NAME["dog"].label] = 20.0
    pan = seg.segment(images[:1])[0]
    assert len(pan.segments) > 1 and {s.label for s in pan.segments} == {coco.BY_NAME["dog"].label}
    ids = set(np.unique(pan.segment_map).tolist()) - {0}
    assert ids == {s.id for s in pan.segments}  # things stay separate instances
    assert all(s.area == int((pan.segment_map == s.id).sum()) for s in pan.segments)


def test_coco_panoptic_round_trip_and_png_encoding(tmp_path):
    from PIL import Image

    from magiceraser.datasets.coco_panoptic import CocoPanopticAnnotations, write_coco_panoptic

    seg = np.zeros((40, 50), np.int32)
    seg[:20] = 7
    seg[20:] = 300  # > 255: needs the G channel
    seg[25:30, 10:20] = 70000  # needs the B channel
    seg[2:6, 40:45] = 5_000_000  # a COCO-sized id: renumbered on load
    segments = [Segment(7, coco.BY_NAME["sky-other-merged"].label), Segment(300, coco.BY_NAME["grass-merged"].label),
                Segment(70000, coco.BY_NAME["dog"].label), Segment(5_000_000, coco.BY_NAME["cat"].label)]
    path = write_coco_panoptic(tmp_path, [("img.jpg", seg, segments)])
    data = json.loads(path.read_text())
    assert data["images"][0] == {"id": 1, "file_name": "img.jpg", "width": 50, "height": 40}
    infos = {s["id"]: s for s in data["annotations"][0]["segments_info"]}
    assert infos[70000]["category_id"] == 18 and infos[70000]["bbox"] == [10, 25, 10, 5] and infos[70000]["area"] == 50
    rgb = np.asarray(Image.open(tmp_path / "panoptic" / "img.png")).astype(int)
    np.testing.assert_array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], seg)  # COCO's id encoding
    ann = CocoPanopticAnnotations(path)
    pan = ann.lookup("/some/where/img.jpg")
    # Same partition and labels (ids renumbered 1..n because one is above 2^16).
    label_of = {s.id: s.label for s in segments}
    expected_labels = np.vectorize(label_of.get)(seg)
    np.testing.assert_array_equal(pan.label_map(), expected_labels)
    assert sorted(s.id for s in pan.segments) == [1, 2, 3, 4]
    for old_id in label_of:
        assert len(np.unique(pan.segment_map[seg == old_id])) == 1
    from magiceraser.datasets.coco_panoptic import AnnotationError

    with pytest.raises(AnnotationError) as exc:
        ann.lookup("other.jpg")
    assert exc.value.reason == "no_annotation"


def test_tiny_llava_loads_with_stock_classes_and_captions(tiny_llava):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from magiceraser.models.captioner import TransformersCaptioner

    processor = AutoProcessor.from_pretrained(tiny_llava)
    assert "<image>" in processor.tokenizer.get_vocab()
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava)
    assert model.config.image_token_index == processor.tokenizer.convert_tokens_to_ids("<image>")
    cap = TransformersCaptioner(str(tiny_llava), device="cpu", batch_size=4, max_new_tokens=8)
    assert cap.prompt("Describe the grass in the image.") == "USER: <image>\nDescribe the grass in the image. ASSISTANT:"
    images = _images(3, 64, 80)
    questions = ["Describe the grass in the image.", "Describe the sky and sea in the image.", "Describe the grass in the image."]
    captions = cap.caption(images, questions)
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    # Greedy and padding-free: a caption does not depend on its batch.
    assert [cap.caption([im], [q])[0] for im, q in zip(images, questions)] == captions


@pytest.mark.gpu
def test_vllm_captioner_on_gpu(tiny_llava):
    from magiceraser.models.captioner import VllmCaptioner

    cap = VllmCaptioner(str(tiny_llava), max_new_tokens=8, gpu_memory_utilization=0.3, max_model_len=256)
    captions = cap.caption(_images(4, 64, 80), ["Describe the grass in the image."] * 4)
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)





def test_coco_panoptic_matches_places365_trees_by_path_not_base_name(tmp_path):
    """``airfield/00000001.jpg`` and ``beach/00000001.jpg`` keep their own segments (the second used to win)."""
    from magiceraser.datasets.coco_panoptic import CocoPanopticAnnotations, write_coco_panoptic

    dog, sky = coco.BY_NAME["dog"].label, coco.BY_NAME["sky-other-merged"].label
    a = np.full((30, 40), 3, np.int32)
    b = np.full((30, 40), 9, np.int32)
    path = write_coco_panoptic(tmp_path / "ann", [("airfield/00000001.jpg", a, [Segment(3, dog)]),
                                                  ("beach/00000001.jpg", b, [Segment(9, sky)])])
    ann = CocoPanopticAnnotations(path)
    for source, label in (("/data/places365/airfield/00000001.jpg", dog), ("s3://bucket/places/beach/00000001.jpg", sky)):
        pan = ann.lookup(source)
        assert {s.label for s in pan.segments} == {label}, source
        assert (pan.label_map() == label).all()
    assert ann.file_names() == ["airfield/00000001.jpg", "beach/00000001.jpg"]
    assert (tmp_path / "ann" / "panoptic" / "airfield" / "00000001.png").is_file()  # one PNG per image


def test_coco_panoptic_base_name_fallback_only_where_unique(tmp_path):
    from magiceraser.datasets.coco_panoptic import AnnotationError, CocoPanopticAnnotations, match_inputs

    ann_dir = tmp_path / "ann"
    (ann_dir / "panoptic").mkdir(parents=True)
    data = {"images": [{"id": i, "file_name": name} for i, name in
                       enumerate(["train/airfield/1.jpg", "val/airfield/1.jpg", "train/beach/2.jpg", "3.jpg"], 1)],
            "annotations": [{"image_id": i, "file_name": f"{i}.png", "segments_info": []} for i in range(1, 5)]}
    (ann_dir / "panoptic.json").write_text(json.dumps(data))
    ann = CocoPanopticAnnotations(ann_dir / "panoptic.json")
    assert ann.match("/d/places/train/airfield/1.jpg") == "train/airfield/1.jpg"  # by the path the JSON names
    assert ann.match("/elsewhere/2.jpg") == "train/beach/2.jpg"  # base name, unique in the JSON
    with pytest.raises(AnnotationError, match=r"matches 2 entries .*train/airfield/1\.jpg, val/airfield/1\.jpg") as exc:
        ann.match("/d/airfield/1.jpg")
    assert exc.value.reason == "ambiguous_annotation"
    matched, missing = match_inputs(ann, ["/d/train/beach/2.jpg", "/d/x/3.jpg", "/d/nope.jpg"])
    assert matched == {"/d/train/beach/2.jpg": "train/beach/2.jpg", "/d/x/3.jpg": "3.jpg"} and missing == ["/d/nope.jpg"]
    with pytest.raises(AnnotationError, match=r"3\.jpg is claimed by 2 inputs \(/d/a/3\.jpg, /d/b/3\.jpg\)"):
        match_inputs(ann, ["/d/a/3.jpg", "/d/b/3.jpg"])  # one entry for two images: one would get the other's segments
    data["images"].append({"id": 5, "file_name": "./3.jpg"})
    data["annotations"].append({"image_id": 5, "file_name": "5.png", "segments_info": []})
    (ann_dir / "panoptic.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotates 3\.jpg twice \(image ids 4 and 5\)"):
        CocoPanopticAnnotations(ann_dir / "panoptic.json")
