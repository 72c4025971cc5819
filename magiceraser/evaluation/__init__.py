"""The paper's evaluation protocol as a tool (method.md, "Evaluation protocol").

    pairs/         pair readers (input, mask, ground truth), one module per source: RealHM, OLRD shards,
                   COCO panoptic, OpenImages
    letterbox.py   long side scaled to 512, short side zero-padded
    metrics.py     PSNR, SSIM (pure torch), Fréchet distance: pure functions
    perceptual.py  LPIPS (AlexNet) and FID (Inception) via torchmetrics / torch-fidelity, local weights
    methods.py     Telea, LaMa, SD inpainting, MagicEraser ablations as configurations of one pipeline
    report.py      the paper's table, CSV, best/worst grids
    config.py      EvalConfig and its parts
    cache.py       cache keys: what each cached pair, image, score and FID feature set depends on
    run.py         ``magiceraser evaluate``: materialise pairs, erase, score, cache, tabulate
"""
