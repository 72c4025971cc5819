"""The eraser (docs/method.md part 3).

    refocus.py       refocused_attention: Eq. 5-9 as a pure tensor function (no N×N mask held)
    processor.py     RefocusAttnProcessor for the UNet's self-attention, active while t ≥ 700
    content_init.py  Telea / Big-LaMa (TorchScript) / none pixel-space fills
    geometry.py      regions, crops, resizing, feathered paste (full resolution)
    settings.py      EraseSettings: the per-call settings, defined and checked once
    pipeline.py      MagicEraserPipeline: __call__ (one image), erase_many (crops batched across calls)
    build.py         build_eraser: the pipeline with its models, for the CLI, the service and the evaluation
    config.py        EraseConfig (CLI / YAML)
    classes.py       `erase --classes`: masks from the panoptic segmentation
    cli.py           `magiceraser erase`
"""
