"""The OLRD data engine (docs/method.md part 1): scene images -> WebDataset shards of removal samples.

Modules, in the order data flows through them:

    inputs.py        listing (directory tree / list file, Places365 layouts, fsspec), keys, shard assignment
    segment.py       panoptic segmentation: Mask2Former (transformers) or COCO panoptic ground truth
    coco_panoptic.py the COCO panoptic JSON + PNG format (read and write)
    compose.py       pure numpy: eligible object, every valid offset at once, blend, background tags
    caption.py       LLaVA captions of the original image (vLLM or transformers)
    stages.py        the stages as batch transforms (Ray Data map_batches UDFs)
    shards.py        tar + sidecar + skipped.jsonl + stats.json, atomically
    preflight.py     checks of every setting before Ray starts; the output created and probed
    job_state.py     job fingerprint, job.json, the finished shards' sidecars: resume and refusal
    ray_pipeline.py  Ray start-up and the Ray Data pipeline of each layout
    driver.py        the driver loop: rows to shards, progress, reruns after a lost node
    job_messages.py  JobError and the [olrd] log line
    olrd_job.py      ``magiceraser olrd``: the command, tying the steps above together
    tracking.py      the job's W&B run (wandb.enabled): counts, skips, preview, throughput, dataset artifact
    preview.py       ``magiceraser preview``: a PNG grid of a shard's samples
    demo_scenes.py   ``magiceraser demo-scenes``: scenes from skimage.data with panoptic annotations
    config.py        OLRDConfig and its sections
"""
