"""The paper's evaluation protocol as a tool (docs/method.md, "Evaluation protocol").

    protocol.py    Evaluation(cfg)() -> EvaluationResult: datasets x methods, the one entry point
    run.py         ``magiceraser evaluate``: config, call, print, exit code
    config.py      EvalConfig and its parts
    pairs/         evaluation pair readers (input, mask, ground truth), one module per source: RealHM,
                   OLRD shards, COCO panoptic, OpenImages
    letterbox.py   long side scaled to 512, short side zero-padded
    pair_store.py  the letterboxed pairs under pairs/<dataset>/: built once, read back
    methods.py     Telea, LaMa, SD inpainting, MagicEraser ablations as configurations of one pipeline
    method_run.py  one method over one dataset's pairs: erase and score what the cache lacks
    scoring.py     the per-image metrics a config asks for (heavy models loaded once)
    metrics.py     PSNR, SSIM (scikit-image's map), Fréchet distance: pure functions
    perceptual.py  LPIPS (AlexNet) and FID (Inception) via torchmetrics / torch-fidelity, local weights
    fid.py         FID per (dataset, method) from cached Inception features
    cache.py       cache keys: what each cached pair, image, score and FID feature set depends on
    report.py      the paper's table, CSV, best/worst grid images: pure functions
    outputs.py     the table files, grids and W&B tables written from the records
    layout.py      where each of those lives under out_dir
    console.py     the ``[evaluate]`` progress line
"""
