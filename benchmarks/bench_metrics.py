"""Metric computation speed against the image-decoding floor, measured in the same run.

Per 512x512 pair (the protocol's size): decode two PNGs + a mask (the floor every evaluation pays),
then each metric. Prints images/s and the cost of each metric as a multiple of the decode floor;
``metrics.ssim`` takes scikit-image's full SSIM map (whole and masked value from one call), and
scikit-image's plain whole-image call is timed on the same images as the reference. LPIPS/FID use random
weights in the real formats (the compute is the same as with the real checkpoints).

The reference-free metrics run at full size with random weights, each saved in its checkpoint's
on-disk format (the ``magiceraser.tiny_models`` writers with the real widths) and loaded through the
evaluation's own classes, one model in memory at a time: ReMOVE (SAM ViT-H through ``RemoveScorer``),
CFD's two terms (DINOv2-giant through ``CfdScorer``, with rectangle segments inside and across the
mask so term 2 runs), the detector judge (Mask2Former Swin-L segmentation, as bench_segmenter.py
builds it, + ``detector_verdict``) and the VLM judge (``VlmJudge``). LLaVA-1.5-7B is 28 GB in fp32: the
judge runs with the real widths (CLIP ViT-L/14-336, Llama-2-7B layers, 32064-token vocabulary) but
``--vlm-layers`` of the 32 language layers, and the 32-layer figure is an extrapolation from the
per-layer time measured in the same judgements (printed as such). A model that does not fit in the
available memory falls back to the next smaller size of its family (printed). Each section prints
its build/load time and its peak RSS.

    .venv/bin/python benchmarks/bench_metrics.py [--pairs 16] [--threads 0] [--pairs-heavy 2]
        [--skip-heavy] [--skip-full-size] [--vlm-layers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch

GIB = 2**30

# facebook/sam-vit-huge: transformers' convert_sam_to_hf.py sets these for sam_vit_h and keeps
# SamVisionConfig's defaults for the rest (1024 px, patch 16, window 14, 256 output channels) and the
# default prompt encoder / mask decoder; the processor is SamImageProcessor's defaults (1024).
# Smaller fall-backs: sam-vit-large, sam-vit-base. (label, vision overrides, parameters)
SAM_SIZES = [
    ("SAM ViT-H (sam-vit-huge, full size)", dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                                 global_attn_indexes=[7, 15, 23, 31]), 641e6),
    ("SAM ViT-L (fallback)", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                  global_attn_indexes=[5, 11, 17, 23]), 312e6),
    ("SAM ViT-B (fallback)", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  global_attn_indexes=[2, 5, 8, 11]), 94e6),
]
_DINOV2_BLOCK = dict(mlp_ratio=4, layerscale_value=1.0, layer_norm_eps=1e-6, image_size=518, patch_size=14, qkv_bias=True)
DINOV2_SIZES = [
    ("DINOv2-giant (dinov2-giant, full size)", dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24,
                                                    use_swiglu_ffn=True, **_DINOV2_BLOCK), 1136e6),
    ("DINOv2-large (fallback)", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                     use_swiglu_ffn=False, **_DINOV2_BLOCK), 304e6),
    ("DINOv2-base (fallback)", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    use_swiglu_ffn=False, **_DINOV2_BLOCK), 86e6),
]
# llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 vision tower, Llama-2-7B language model (vocabulary 32064).
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768)
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, vocab_size=32064)
LLAMA2_7B_LAYER_PARAMS = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096


def natural_pairs(n: int, size: int = 512, seed: int = 0):
    """(pred, target, mask) pairs from skimage.data photos: target = photo, pred = a blurred hole fill."""
    import cv2
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = cv2.resize(photos[i % len(photos)], (size, size), interpolation=cv2.INTER_AREA)
        mask = np.zeros((size, size), bool)
        y, x = rng.integers(64, size - 192, 2)
        mask[y : y + 128, x : x + 160] = True
        pred = img.copy()
        pred[mask] = cv2.GaussianBlur(img, (31, 31), 0)[mask]
        out.append((pred, img, mask))
    return out


def timed(fn, items, repeat: int = 1) -> float:
    """Best-of-``repeat`` seconds per item."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for it in items:
            fn(*it)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best


# --- full-size reference-free metrics ------------------------------------------------------------


def _proc_status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    return float("inf")


def _free() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next section's RSS starts low."""
    import ctypes

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_PEAK_RSS = [0.0]  # the process's peak RSS, GiB: resetting VmHWM (below) also resets ru_maxrss


def process_peak_rss() -> float:
    """Peak RSS of the whole run so far, GiB (the sections' peaks and the current high-water mark)."""
    _PEAK_RSS[0] = max(_PEAK_RSS[0], _proc_status_gib("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return _PEAK_RSS[0]


@contextlib.contextmanager
def rss_section(title: str):
    """Print the section's wall time and peak RSS (VmHWM reset at its start where Linux allows)."""
    process_peak_rss()
    _free()
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS high-water mark to the current RSS
    t0 = time.perf_counter()
    print(f"[{title}] ...", flush=True)
    yield
    process_peak_rss()
    _free()
    print(f"[{title}] {time.perf_counter() - t0:.0f} s, peak RSS {_proc_status_gib('VmHWM'):.1f} GiB "
          f"(RSS after freeing {_proc_status_gib('VmRSS'):.1f} GiB)", flush=True)


def pick_size(family: str, sizes: list[tuple[str, dict, float]], factor: float = 3.0) -> tuple[str, dict]:
    """The largest size whose fp32 weights x ``factor`` (build/save/load transients, activations) fit
    in the memory available now; says so when it is not the first (full) size."""
    avail = _available_gib()
    for i, (label, overrides, params) in enumerate(sizes):
        need = params * 4 * factor / GIB
        if need <= avail or i == len(sizes) - 1:
            if i:
                print(f"  {family}: {sizes[0][0]} needs ~{sizes[0][2] * 4 * factor / GIB:.0f} GiB, "
                      f"{avail:.0f} GiB available: does not fit, using {label}")
            return label, overrides
    raise AssertionError("unreachable")


def heavy_items(pairs, n: int):
    """(erased, mask) of the first ``n`` pairs, and a warm-up item (pair 0 mirrored: no cache hit)."""
    items = [(p, m) for p, _, m in pairs[:n]]
    warm = (np.ascontiguousarray(pairs[0][0][:, ::-1]), np.ascontiguousarray(pairs[0][2][:, ::-1]))
    return items, warm


def time_heavy(fn: Callable, items, warm) -> float:
    """Seconds per item of ``fn(*item)`` after one warm-up call."""
    fn(*warm)
    t0 = time.perf_counter()
    for it in items:
        fn(*it)
    return (time.perf_counter() - t0) / len(items)


def _params(model) -> float:
    return sum(p.numel() for p in model.parameters())


def bench_remove(items, warm) -> list[tuple[str, float, str]]:
    """ReMOVE through RemoveScorer on a random SAM saved by tiny_models.sam's writer with the real widths."""
    from magiceraser.evaluation.remove import RemoveScorer
    from magiceraser.tiny_models import sam

    label, vision = pick_size("ReMOVE", SAM_SIZES)
    with rss_section(f"ReMOVE: {label}"), tempfile.TemporaryDirectory(prefix="bench-sam-") as tmp:
        t0 = time.perf_counter()
        # write_tiny_sam reads these tables when called: the real ones make it write the real checkpoint's
        # layout (config, weights, preprocessor_config.json with processor_class) at full size.
        with mock.patch.dict(sam.TINY_VISION, vision, clear=True), \
                mock.patch.dict(sam.TINY_PROMPT_ENCODER, {}, clear=True), \
                mock.patch.dict(sam.TINY_MASK_DECODER, {}, clear=True), \
                mock.patch.dict(sam.TINY_PROCESSOR, {}, clear=True):
            sam.write_tiny_sam(tmp)
        _free()
        t1 = time.perf_counter()
        scorer = RemoveScorer(tmp, device="cpu")
        print(f"  built+saved {t1 - t0:.0f} s, loaded {time.perf_counter() - t1:.0f} s: "
              f"{_params(scorer.model) / 1e6:.0f} M parameters, input {scorer.input_size}², grid {scorer.grid}²")
        sec = time_heavy(lambda p, m: scorer(p, m), items, warm)
        scorer = None  # freed before the section reports its RSS
    return [("ReMOVE (crop + SAM encoder + score)", sec, label)]


def cfd_segments(mask: np.ndarray) -> list[np.ndarray]:
    """Four non-overlapping rectangle segments: two inside the mask's box, two crossing its edge around them."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y, x = int(rows[0]), int(cols[0])

    def rect(y0, y1, x0, x1):
        seg = np.zeros_like(mask, dtype=bool)
        seg[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        return seg

    center1, center2 = rect(y + 20, y + 60, x + 20, x + 70), rect(y + 70, y + 110, x + 90, x + 140)
    bound1 = rect(y - 40, y + 64, x - 40, x + 80) & ~center1
    bound2 = rect(y + 64, y + 168, x + 80, x + 200) & ~center2
    return [center1, center2, bound1, bound2]


def bench_cfd(items, warm) -> list[tuple[str, float, str]]:
    """CFD's two terms through CfdScorer on a random DINOv2 saved by tiny_models.dinov2's writer."""
    from magiceraser.evaluation.cfd import CfdScorer
    from magiceraser.tiny_models import dinov2

    label, overrides = pick_size("CFD", DINOV2_SIZES)
    with rss_section(f"CFD: {label}"), tempfile.TemporaryDirectory(prefix="bench-dinov2-") as tmp:
        t0 = time.perf_counter()
        with mock.patch.dict(dinov2.TINY_DINOV2, overrides, clear=True):
            dinov2.write_tiny_dinov2(tmp)
        _free()
        t1 = time.perf_counter()
        scorer = CfdScorer(tmp, device="cpu")
        print(f"  built+saved {t1 - t0:.0f} s, loaded {time.perf_counter() - t1:.0f} s: "
              f"{_params(scorer.model) / 1e6:.0f} M parameters")
        forwards = [0]
        hook = scorer.model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
        terms: list[tuple[float, float]] = []

        def run(p, m):
            terms.append(scorer.terms(p, m, cfd_segments(m)))

        sec = time_heavy(run, items, warm)
        hook.remove()
        print(f"  {forwards[0] / (len(items) + 1):.0f} DINOv2 forwards per pair (term 1 + two center segments in"
              f" term 2); terms of the last pair {terms[-1][0]:.3f}, {terms[-1][1]:.3f}")
        scorer = None  # freed before the section reports its RSS
    return [("CFD terms 1+2 (4 rectangle segments)", sec, label)]


def bench_detector(items, warm) -> list[tuple[str, float, str]]:
    """Mask2Former Swin-L (bench_segmenter.py's full-size build) segmentation + detector_verdict."""
    from bench_segmenter import write_mask2former

    from magiceraser.evaluation.judges import detector_verdict, target_labels
    from magiceraser.models.segmenter import Mask2FormerSegmenter

    label = "Mask2Former Swin-L COCO panoptic (full size)"
    labels = target_labels("cat")
    with rss_section(f"detector judge: {label}"), tempfile.TemporaryDirectory(prefix="bench-m2f-") as tmp:
        t0 = time.perf_counter()
        write_mask2former("cpu", True, Path(tmp))
        _free()
        t1 = time.perf_counter()
        # Threshold 0, as bench_segmenter.py: every query is post-processed (an upper bound on that cost;
        # with random weights the evaluation's 0.5 would keep almost none).
        segmenter = Mask2FormerSegmenter(tmp, device="cpu", threshold=0.0)
        print(f"  built+saved {t1 - t0:.0f} s, loaded {time.perf_counter() - t1:.0f} s: "
              f"{_params(segmenter.model) / 1e6:.0f} M parameters")
        pans = []

        def run(p, m):
            pan = segmenter.segment([p])[0]
            pans.append((m, pan))
            detector_verdict(m, pan, labels)

        sec = time_heavy(run, items, warm)
        verdict = timed(lambda m, pan: detector_verdict(m, pan, labels), pans, repeat=5)
        # Random weights score every query ~1/134, below mask_threshold once post-processing weighs the
        # masks by it: no segment survives, but all 200 queries still go through the loop.
        print(f"  {np.mean([len(pan.segments) for _, pan in pans]):.0f} segments per image")
        segmenter = None  # freed before the section reports its RSS
    return [("judge detector: segment + verdict (thr 0)", sec, label),
            ("  of which detector_verdict alone", verdict, "-")]


class LayerClock:
    """Wall seconds spent inside each of ``modules`` (forward pre-/post-hooks)."""

    def __init__(self, modules):
        self.total = 0.0
        self.calls = 0
        self.tokens = 0
        self._start = 0.0
        self._handles = []
        for mod in modules:
            self._handles.append(mod.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(mod.register_forward_hook(self._post))

    def _pre(self, module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("pixel_values"))
        if torch.is_tensor(hidden) and hidden.dim() == 3:
            self.tokens = int(hidden.shape[1])
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self.total += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def write_llava(out: str, layers: int) -> str:
    """LLaVA-1.5-7B's widths with ``layers`` language layers, in llava-hf's format; processor, tokenizer
    and chat template from tiny_models.llava's writer (its vision input set to the real 336 px, patch 14)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from magiceraser.tiny_models import llava

    with mock.patch.dict(llava.TINY_VISION, {"image_size": CLIP_L_336["image_size"], "patch_size": CLIP_L_336["patch_size"]}):
        llava.write_tiny_llava(out)
    tiny = LlavaConfig.from_pretrained(out)
    ids = {k: getattr(tiny.text_config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**CLIP_L_336),
        text_config=LlamaConfig(**{**LLAMA2_7B, "num_hidden_layers": layers}, **ids),
        image_token_index=tiny.image_token_index, image_seq_length=tiny.image_seq_length,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.save_pretrained(out)  # replaces the tiny model's config and weights
    del model
    return f"LLaVA-1.5-7B widths, {layers}/{LLAMA2_7B['num_hidden_layers']} LM layers"


def bench_vlm(items, warm, layers: int) -> list[tuple[str, float, str]]:
    """VlmJudge on LLaVA-1.5-7B's widths with ``layers`` language layers; extrapolated to 32."""
    from magiceraser.evaluation.vlm_judge import VlmJudge

    full_layers = LLAMA2_7B["num_hidden_layers"]
    with rss_section("VLM judge: LLaVA-1.5-7B widths, reduced depth"), \
            tempfile.TemporaryDirectory(prefix="bench-llava-") as tmp:
        t0 = time.perf_counter()
        label = write_llava(tmp, layers)
        _free()
        t1 = time.perf_counter()
        judge = VlmJudge(tmp, device="cpu")  # the default yes/no words (the tiny tokenizer has them as tokens)
        model = judge._llava.model
        print(f"  built+saved {t1 - t0:.0f} s, loaded {time.perf_counter() - t1:.0f} s: "
              f"{_params(model) / 1e6:.0f} M parameters ({label})")
        decoder = [m for m in model.modules() if type(m).__name__ == "LlamaDecoderLayer"]
        vision = [m for m in model.modules() if type(m).__name__ == "CLIPVisionModel"]
        lm_clock, vision_clock = LayerClock(decoder), LayerClock(vision)
        judge(*warm, "cat")
        lm_clock.reset()
        vision_clock.reset()
        t2 = time.perf_counter()
        for p, m in items:
            judge(p, m, "cat")
        sec = (time.perf_counter() - t2) / len(items)
        lm_clock.remove()
        vision_clock.remove()
        per_layer = lm_clock.total / max(lm_clock.calls, 1)
        extrapolated = sec + (full_layers - layers) * per_layer
        print(f"  sequence {lm_clock.tokens} tokens; per judgement: vision tower {vision_clock.total / len(items):.2f} s, "
              f"{per_layer:.2f} s per language layer x {layers}")
        print(f"  EXTRAPOLATION to {full_layers} layers: {sec:.2f} + {full_layers - layers} x {per_layer:.2f} s = "
              f"{extrapolated:.2f} s per judgement; the 32-layer model's fp32 weights would be "
              f"~{(_params(model) + (full_layers - layers) * LLAMA2_7B_LAYER_PARAMS) * 4 / GIB:.0f} GiB")
        judge = model = decoder = vision = None  # freed before the section reports its RSS
    return [(f"judge VLM, measured ({layers}/{full_layers} LM layers)", sec, label),
            (f"judge VLM, EXTRAPOLATED to {full_layers} layers", extrapolated,
             "LLaVA-1.5-7B (extrapolation, not measured)")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-heavy", action="store_true", help="no LPIPS / Inception")
    parser.add_argument("--skip-full-size", action="store_true",
                        help="no ReMOVE / CFD / detector judge / VLM judge (the full-size models)")
    parser.add_argument("--pairs-heavy", type=int, default=2, help="pairs the full-size models score (after a warm-up)")
    parser.add_argument("--vlm-layers", type=int, default=2, help="LLaVA language layers actually built (of 32)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from skimage.metrics import structural_similarity

    from magiceraser.evaluation import metrics as M
    from magiceraser.imageio import decode_image, decode_mask, encode_image

    pairs = natural_pairs(args.pairs)
    encoded = [(encode_image(p, "png"), encode_image(t, "png"), encode_image(m.astype(np.uint8) * 255, "png")) for p, t, m in pairs]
    print(f"{args.pairs} pairs of 512x512, torch threads {torch.get_num_threads()}")

    def decode(p, t, m):
        decode_image(p), decode_image(t), decode_mask(m)

    floor = timed(decode, encoded, repeat=2)
    rows = [("decode 2 PNG + mask (floor)", floor, "-")]
    rows.append(("PSNR whole", timed(lambda p, t, m: M.psnr(p, t), pairs, 2), "-"))
    rows.append(("PSNR masked", timed(lambda p, t, m: M.psnr(p, t, m), pairs, 2), "-"))
    rows.append(("SSIM whole (metrics.ssim)", timed(lambda p, t, m: M.ssim(p, t), pairs, 2), "-"))
    rows.append(("SSIM whole + masked, one call (metrics)", timed(lambda p, t, m: M.ssim_whole_and_masked(p, t, m), pairs, 2), "-"))
    rows.append(("SSIM whole (scikit-image)", timed(lambda p, t, m: structural_similarity(
        p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1), pairs, 1), "-"))
    from magiceraser.evaluation.config import MetricsConfig
    from magiceraser.evaluation.scoring import Scorer

    scorer = Scorer(MetricsConfig(masked=True), "cpu")
    rows.append(("evaluate's per-image PSNR+SSIM (whole+mask)", timed(lambda p, t, m: scorer.score(p, m, t, {}), pairs, 1), "-"))
    if not args.skip_heavy:
        from magiceraser.evaluation.perceptual import InceptionFeatures, LPIPSAlex, write_random_weights

        with tempfile.TemporaryDirectory() as tmp:
            w = write_random_weights(tmp)
            lp = LPIPSAlex(w["alexnet"])
            lp(*pairs[0])  # warm-up
            rows.append(("LPIPS AlexNet whole + masked", timed(lambda p, t, m: lp(p, t, m), pairs[:8], 1), "AlexNet (full size)"))
            inc = InceptionFeatures(w["inception"], batch_size=8)
            inc([pairs[0][0]])
            imgs = [p for p, _, _ in pairs[:8]]
            t0 = time.perf_counter()
            inc(imgs)
            rows.append(("Inception features (FID), batch 8", (time.perf_counter() - t0) / len(imgs), "InceptionV3 (full size)"))
        feats = np.random.default_rng(0).normal(size=(200, 2048))
        t0 = time.perf_counter()
        M.frechet_distance_from_features(feats, feats[::-1] * 1.1)
        print(f"Fréchet distance of 200 vs 200 samples of 2048-d features: {time.perf_counter() - t0:.3f} s")
        lp = inc = None  # freed before the full-size models
    if not args.skip_full_size:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no shard-writing / weight-loading bars between the sections' lines
        items, warm = heavy_items(natural_pairs(max(args.pairs, args.pairs_heavy)), args.pairs_heavy)
        print(f"full-size models: {len(items)} pairs each after one warm-up call, one model in memory at a time")
        rows += bench_remove(items, warm)
        rows += bench_cfd(items, warm)
        rows += bench_detector(items, warm)
        rows += bench_vlm(items, warm, args.vlm_layers)

    print(f"{'step':44s} {'ms/pair':>10s} {'pairs/s':>9s} {'x decode':>10s}  model")
    for name, sec, model in rows:
        print(f"{name:44s} {sec * 1e3:10.2f} {1 / sec:9.3g} {sec / floor:10.4g}  {model}")
    print(f"process peak RSS: {process_peak_rss():.1f} GiB")


if __name__ == "__main__":
    main()
