"""Metric computation speed against the image-decoding floor, measured in the same run.

Per 512x512 pair (the protocol's size): decode two PNGs + a mask (the floor every evaluation pays),
then each metric. Prints images/s and the cost of each metric as a multiple of the decode floor;
``metrics.ssim`` takes scikit-image's full SSIM map (whole and masked value from one call), and
scikit-image's plain whole-image call is timed on the same images as the reference. LPIPS/FID use random
weights in the real formats (the compute is the same as with the real checkpoints).

    .venv/bin/python benchmarks/bench_metrics.py [--pairs 16] [--threads 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-heavy", action="store_true", help="no LPIPS / Inception")
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
    rows = [("decode 2 PNG + mask (floor)", floor)]
    rows.append(("PSNR whole", timed(lambda p, t, m: M.psnr(p, t), pairs, 2)))
    rows.append(("PSNR masked", timed(lambda p, t, m: M.psnr(p, t, m), pairs, 2)))
    rows.append(("SSIM whole (metrics.ssim)", timed(lambda p, t, m: M.ssim(p, t), pairs, 2)))
    rows.append(("SSIM whole + masked, one call (metrics)", timed(lambda p, t, m: M.ssim_whole_and_masked(p, t, m), pairs, 2)))
    rows.append(("SSIM whole (scikit-image)", timed(lambda p, t, m: structural_similarity(
        p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1), pairs, 1)))
    from magiceraser.evaluation.config import MetricsConfig
    from magiceraser.evaluation.scoring import Scorer

    scorer = Scorer(MetricsConfig(masked=True), "cpu")
    rows.append(("evaluate's per-image PSNR+SSIM (whole+mask)", timed(lambda p, t, m: scorer.score(p, m, t, {}), pairs, 1)))
    if not args.skip_heavy:
        from magiceraser.evaluation.perceptual import InceptionFeatures, LPIPSAlex, write_random_weights

        with tempfile.TemporaryDirectory() as tmp:
            w = write_random_weights(tmp)
            lp = LPIPSAlex(w["alexnet"])
            lp(*pairs[0])  # warm-up
            rows.append(("LPIPS AlexNet whole + masked", timed(lambda p, t, m: lp(p, t, m), pairs[:8], 1)))
            inc = InceptionFeatures(w["inception"], batch_size=8)
            inc([pairs[0][0]])
            imgs = [p for p, _, _ in pairs[:8]]
            t0 = time.perf_counter()
            inc(imgs)
            rows.append(("Inception features (FID), batch 8", (time.perf_counter() - t0) / len(imgs)))
        feats = np.random.default_rng(0).normal(size=(200, 2048))
        t0 = time.perf_counter()
        M.frechet_distance_from_features(feats, feats[::-1] * 1.1)
        print(f"Fréchet distance of 200 vs 200 samples of 2048-d features: {time.perf_counter() - t0:.3f} s")

    print(f"{'step':38s} {'ms/pair':>9s} {'pairs/s':>9s} {'x decode':>9s}")
    for name, sec in rows:
        print(f"{name:38s} {sec * 1e3:9.2f} {1 / sec:9.1f} {sec / floor:9.2f}")


if __name__ == "__main__":
    main()
