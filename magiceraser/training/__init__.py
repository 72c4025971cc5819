"""Prompt-tuning trainer (docs/method.md part 2): textual-inversion v* + LoRA on SD 1.5 Inpainting.

Data flows: OLRD shards -> :mod:`data` (webdataset stream, crops, stock inpainting inputs, prompt
mixing) -> :mod:`loop` (phase 1: v* only; phase 2: v* + LoRA; :mod:`model` holds the loss,
:mod:`step` the optimizer step, :mod:`reporting` the metrics) -> :mod:`checkpoint` (resumable
state) and :mod:`export` (the directory stock diffusers loads).
:mod:`distributed` is the only place that knows about other processes; :mod:`ray_launch` runs the
same loop under Ray Train; :mod:`latent_cache` precomputes VAE latents. Entry point: :mod:`train`.
"""
