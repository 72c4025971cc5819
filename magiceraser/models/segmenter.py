"""The panoptic segmenter every part uses (data engine, eraser, evaluation, service).

:class:`Mask2FormerSegmenter`: ``Mask2FormerForUniversalSegmentation`` through transformers (no
detectron2), batched, float16 on GPU, stuff instances fused (``label_ids_to_fuse``), labels mapped
by name onto :mod:`magiceraser.coco`'s contiguous COCO panoptic label space. The ground-truth
backend of the data engine is :class:`magiceraser.datasets.coco_panoptic.CocoPanopticAnnotations`.
"""

from __future__ import annotations

import numpy as np

from magiceraser import coco
from magiceraser.devices import default_dtype, resolve_device
from magiceraser.models.processors import image_processor
from magiceraser.panoptic import PanopticResult, Segment

__all__ = ["Mask2FormerSegmenter"]


_PIL_PROCESSOR = "transformers.models.mask2former.image_processing_pil_mask2former:Mask2FormerImageProcessorPil"


class Mask2FormerSegmenter:
    """Mask2Former panoptic segmentation (implements :class:`magiceraser.panoptic.PanopticSegmenter`)."""

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 8,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        fuse_stuff: bool = True,
    ):
        import torch
        from transformers import Mask2FormerForUniversalSegmentation

        self.model_id = model
        self.device = resolve_device(device)
        self.dtype = default_dtype(self.device, dtype)
        self.batch_size = batch_size
        self.threshold, self.mask_threshold = threshold, mask_threshold
        self.overlap_mask_area_threshold = overlap_mask_area_threshold
        self.processor = image_processor(model, _PIL_PROCESSOR)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(model, dtype=self.dtype)
        self.model.to(self.device).eval()
        # Map the checkpoint's label ids onto our COCO panoptic labels by name, so a checkpoint
        # with another order still lands in the right classes; a foreign taxonomy fails loudly.
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        unknown = sorted(v for v in id2label.values() if v not in coco.BY_NAME)
        if unknown:
            raise ValueError(
                f"{model} predicts classes outside the COCO panoptic taxonomy (e.g. {unknown[:3]}): "
                "use a COCO panoptic Mask2Former checkpoint such as facebook/mask2former-swin-large-coco-panoptic"
            )
        self._to_coco = np.zeros(max(id2label) + 1, dtype=np.int64)
        for i, name in id2label.items():
            self._to_coco[i] = coco.BY_NAME[name].label
        self._fuse = {i for i, name in id2label.items() if not coco.BY_NAME[name].isthing} if fuse_stuff else set()
        self._torch = torch

    def segment(self, images: list[np.ndarray]) -> list[PanopticResult]:
        """Segment HxWx3 uint8 RGB images, ``batch_size`` at a time; results at each image's size."""
        out: list[PanopticResult] = []
        for start in range(0, len(images), self.batch_size):
            out.extend(self._segment_batch(images[start : start + self.batch_size]))
        return out

    def _segment_batch(self, images: list[np.ndarray]) -> list[PanopticResult]:
        torch = self._torch
        inputs = self.processor(images=list(images), return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs)
            # Post-process in float32: softmax/argmax ties in float16 would make CPU and GPU differ.
            outputs.class_queries_logits = outputs.class_queries_logits.float()
            outputs.masks_queries_logits = outputs.masks_queries_logits.float()
            results = self.processor.post_process_panoptic_segmentation(
                outputs,
                threshold=self.threshold,
                mask_threshold=self.mask_threshold,
                overlap_mask_area_threshold=self.overlap_mask_area_threshold,
                label_ids_to_fuse=self._fuse,
                target_sizes=[im.shape[:2] for im in images],
            )
        pans = []
        for res in results:
            seg = res["segmentation"].to("cpu").numpy().astype(np.int32)
            seg[seg < 0] = 0  # -1 = "no segment found at all"
            areas = np.bincount(seg.ravel())
            segments, seen = [], set()
            for info in res["segments_info"]:
                sid = int(info["id"])
                if sid in seen or sid >= areas.size or areas[sid] == 0:
                    continue  # fused stuff is listed once per merged query
                seen.add(sid)
                label = int(self._to_coco[int(info["label_id"])])
                segments.append(Segment(id=sid, label=label, area=int(areas[sid]), score=float(info["score"])))
            pans.append(PanopticResult(seg, segments))
        return pans
