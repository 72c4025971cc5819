"""The model card (``README.md``) of an export, as the Hugging Face Hub reads it.

:func:`write_model_card` reads the export's ``magiceraser.json`` (checked as the eraser checks it,
:func:`~magiceraser.artifacts.read_trained_output`) and writes beside it:

* ``README.md``: YAML metadata (``huggingface_hub.ModelCardData``: ``base_model`` only when it is a
  Hub id, ``library_name: diffusers``, the base model's license, tags, ``pipeline_tag``,
  ``instance_prompt``), what the weights were trained on (the shard lineage when the export
  records one, the step count, the key settings of ``training_config``), the validation grid, a
  snippet that loads the export with stock diffusers and erases one image, and a note on the method;
* ``validation.png``: a copy of ``validation_grid`` when one is given. Without one, a
  ``validation.png`` already in the folder (a replaced run's) is removed: the card describes only
  what it was written with.

Both files are written atomically (:mod:`magiceraser.atomic`), the grid first, the card last.
The card names no path of the export itself (its snippet loads ``"."``, the card's own folder):
two identical runs in different folders write identical cards, as they write identical weights
(the card is part of the export's W&B model artifact, ``magiceraser.lineage.export_files``).

The snippet's settings are plain assignments at its top (``IMAGE_PATH``, ``MASK_PATH``,
``OUTPUT_PATH``, ``BACKGROUND``, ``BASE_MODEL``, ``MAGICERASER_MODEL``, ``TOKEN``, ``RESOLUTION``,
``STEPS``, ...), and it leaves ``pipe`` and ``PROMPT`` defined: tests substitute the base model and
the step count and run it (tests/training/test_model_card.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from magiceraser import __version__
from magiceraser.artifacts import (
    CARD_GRID_NAME,
    META_NAME,
    MODEL_CARD_NAME,
    read_trained_output,
)
from magiceraser.atomic import atomic_write_bytes, atomic_write_text
from magiceraser.models.hub import is_hub_id
from magiceraser.prompts import LEARNED_TEMPLATE, learned_prompt
from magiceraser.training.card_snippet import diffusers_snippet
from magiceraser.write_errors import writing

GRID_NAME = CARD_GRID_NAME

#: Licenses of the base models whose license is known, keyed by Hub id (lower case: Hub ids are
#: case-insensitive). A base model not listed gets ``license: other`` and a note in the text.
BASE_MODEL_LICENSES: dict[str, str] = {
    "stable-diffusion-v1-5/stable-diffusion-inpainting": "creativeml-openrail-m",
    "runwayml/stable-diffusion-inpainting": "creativeml-openrail-m",
}

TAGS = [
    "stable-diffusion",
    "stable-diffusion-diffusers",
    "diffusers",
    "lora",
    "textual_inversion",  # diffusers' training scripts spell it so
    "inpainting",
    "object-removal",
    "magiceraser",
]
PIPELINE_TAG = "image-to-image"  # the Hub has no inpainting task; image-to-image is the nearest

PAPER = "Li, Zhang, Huang, Liu, Pei, Shao, Xu: *MagicEraser: Erasing Any Objects via Semantics-Aware Control*, ECCV 2024"
PAPER_URL = "https://arxiv.org/abs/2410.10207"

#: Shards listed in the card; the rest are counted (``magiceraser.json`` holds them all).
MAX_LISTED_SHARDS = 20
NOT_RECORDED = "not recorded"


def write_model_card(export_dir: str | Path, *, validation_grid: str | Path | None = None) -> Path:
    """Write ``README.md`` (and ``validation.png`` from ``validation_grid``) into ``export_dir``; returns the card's path.

    Refuses (FileNotFoundError / ValueError, before writing anything) a folder that is not a
    complete export, as the eraser would.
    """
    from huggingface_hub import ModelCard

    out = Path(export_dir)
    trained = read_trained_output(out)
    meta = trained.meta
    grid_target = out / GRID_NAME
    grid_step = None
    if validation_grid is not None:
        grid = Path(validation_grid)
        data = grid.read_bytes()  # a missing grid fails here, before anything is written
        match = re.fullmatch(r"step-(\d+)\.png", grid.name)
        grid_step = int(match.group(1)) if match else None
        if not (grid_target.exists() and grid.resolve() == grid_target.resolve()):
            with writing(grid_target, "the model card's validation grid"):
                atomic_write_bytes(grid_target, data)
    elif grid_target.exists():
        with writing(grid_target, "the model card's validation grid"):
            grid_target.unlink()

    card = ModelCard(card_text(meta, has_grid=validation_grid is not None, grid_step=grid_step))
    path = out / MODEL_CARD_NAME
    with writing(path, "the model card"):
        atomic_write_text(path, str(card))
    return path


# ---------------------------------------------------------------------------------------- the text


def hub_base_model(name: str) -> str | None:
    """``name`` when it is a Hub id (and names no local folder, which the loaders would take first), else None."""
    if not name or not is_hub_id(name) or Path(name).expanduser().exists():
        return None
    return name


def base_model_license(name: str) -> str | None:
    """The license of base model ``name``: from :data:`BASE_MODEL_LICENSES`, or from the card of a
    local copy (a downloaded snapshot keeps the Hub's ``README.md``); None when unknown."""
    if hub_base_model(name):
        return BASE_MODEL_LICENSES.get(name.lower())
    readme = Path(name).expanduser() / MODEL_CARD_NAME
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        license_ = ModelCard.load(readme).data.license
    except Exception:  # noqa: BLE001 - a card we cannot parse names no license
        return None
    return license_ if isinstance(license_, str) and license_ and license_ != "other" else None


def project_url() -> str | None:
    """The project's home page from the installed package's metadata (``[project.urls]``), if any."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        md = metadata("magiceraser")
    except PackageNotFoundError:
        return None
    for entry in md.get_all("Project-URL") or []:
        _, _, url = entry.partition(",")
        if url.strip():
            return url.strip()
    home = md.get("Home-page")
    return home.strip() if home and home.strip() not in ("", "UNKNOWN") else None


def _code(text: Any) -> str:
    """``text`` as inline Markdown code (so ``<magiceraser-bg>`` is not read as an HTML tag)."""
    text = str(text)
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _get(tree: Any, dotted: str, default: Any = NOT_RECORDED) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def _fingerprint(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("fingerprint", entry))
    return str(entry)


def _shard_table(shards: list[Any]) -> list[str]:
    """A table of shards (URI, digest, size, OLRD job), at most :data:`MAX_LISTED_SHARDS` rows and a count of the rest."""
    rows = [shard if isinstance(shard, dict) else {"uri": shard} for shard in shards]
    with_job = any("job_fingerprint" in r for r in rows)
    lines = ["", "| shard | digest | bytes |" + (" OLRD job |" if with_job else ""),
             "| --- | --- | --- |" + (" --- |" if with_job else "")]
    for r in rows[:MAX_LISTED_SHARDS]:
        digest = r.get("digest") or r.get("sha256") or r.get("identity") or NOT_RECORDED
        job = r.get("job_fingerprint")
        lines.append(f"| {_code(r.get('uri', '?'))} | {_code(digest)} | {r.get('bytes', r.get('size', ''))} |"
                     + ((f" {_code(job)} |" if job else " none |") if with_job else ""))
    if len(rows) > MAX_LISTED_SHARDS:
        lines.append(f"| … and {len(rows) - MAX_LISTED_SHARDS} more | (all in `{META_NAME}`, `lineage`) | |" + (" |" if with_job else ""))
    lines.append("")
    return lines


LINEAGE_PARTS = ("job_fingerprints", "datasets", "shards", "shards_without_job", "latent_cache")


def lineage_lines(meta: dict[str, Any]) -> list[str]:
    """The "Training data" lines on the shards: the recorded lineage, or "not recorded".

    Reads ``magiceraser.json``'s ``lineage`` (``magiceraser.lineage.DatasetLineage.record``): the OLRD
    job fingerprints, each job's dataset artifact (name, digest, shard count), every shard (URI,
    digest, size, job) and, for a run on a latent cache, the cache. Each part is shown where present.
    """
    lineage = meta.get("lineage")
    if not isinstance(lineage, dict) or not any(k in lineage for k in LINEAGE_PARTS):
        return [f"- Shard lineage: {NOT_RECORDED} (this export's `{META_NAME}` has no `lineage` entry)."]
    lines: list[str] = []
    jobs = lineage.get("job_fingerprints")
    if isinstance(jobs, list):
        lines.append(f"- OLRD jobs ({len(jobs)}): "
                     + (", ".join(_code(_fingerprint(j)) for j in jobs) or "none recorded (no `job.json` vouches for the shards)"))
    for d in lineage.get("datasets") or []:
        if not isinstance(d, dict):
            continue
        shards = d.get("shards") if isinstance(d.get("shards"), list) else None
        count = d.get("num_shards", len(shards) if shards is not None else NOT_RECORDED)
        lines.append(f"- Dataset artifact {_code(d.get('artifact', NOT_RECORDED))} of OLRD job "
                     f"{_code(d.get('job_fingerprint', NOT_RECORDED))}: digest {_code(d.get('digest', NOT_RECORDED))}, "
                     f"{count} shards" + (":" if shards else ""))
        if shards:
            lines += _shard_table(shards)
    shards = lineage.get("shards")
    if isinstance(shards, list):
        lines.append(f"- Shards read ({len(shards)}):")
        lines += _shard_table(shards)
    loose = lineage.get("shards_without_job")
    if isinstance(loose, list) and loose:
        lines.append(f"- Shards of no recorded OLRD job ({len(loose)}):")
        lines += _shard_table(loose)
    if lineage.get("latent_cache"):
        lines.append(f"- Latent cache: {_code(lineage['latent_cache'])} (the run read VAE latents from it; "
                     "the shards behind it are recorded in the cache, not here)")
    return lines


def settings_rows(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(setting, value) rows of the hyperparameter table, from ``magiceraser.json``."""
    cfg = meta.get("training_config") or {}
    g = lambda key: _get(cfg, key)  # noqa: E731
    lora = meta.get("lora") or {}
    rank, alpha = lora.get("rank", g("model.lora.rank")), lora.get("alpha", g("model.lora.alpha"))
    scale = f" (scale alpha / rank = {alpha / rank:g})" if isinstance(rank, (int, float)) and isinstance(alpha, (int, float)) and rank else ""
    targets = g("model.lora.target_modules")
    targets = ", ".join(_code(t) for t in targets) if isinstance(targets, list) else targets
    ti, total = g("phases.textual_inversion_steps"), g("phases.total_steps")
    subset = g("phases.textual_inversion_subset")
    subset = f"{subset * 100:g}% of the samples" if isinstance(subset, (int, float)) else f"a subset ({subset})"
    batch, accum, world = g("data.batch_size"), g("optim.grad_accumulation"), meta.get("world_size", NOT_RECORDED)
    effective = (f" = {batch * accum * world} per optimizer step" if all(isinstance(v, int) for v in (batch, accum, world)) else "")
    res = g("data.resolution")
    p = g("data.prompt_learned_prob")
    template = _code(LEARNED_TEMPLATE.format(token=meta["token"], tag="{tag}"))
    return [
        ("optimizer steps", f"{meta.get('steps', NOT_RECORDED)} (of `phases.total_steps` {total})"),
        ("phases", f"1: v* alone for {ti} steps on {subset}, every prompt the learned one; 2: v* and LoRA jointly until step {total}"),
        ("processes (world size)", str(world)),
        ("LoRA", f"rank {rank}, alpha {alpha}{scale}, dropout {g('model.lora.dropout')}, on {targets}"),
        ("learning rates", f"LoRA {g('optim.lr')}, v* {g('optim.embedding_lr')}; schedule {_code(g('optim.scheduler'))}, "
                           f"{g('optim.warmup_steps')} warm-up steps"),
        ("optimizer", f"AdamW, betas {g('optim.betas')}, eps {g('optim.eps')}, weight decay LoRA {g('optim.weight_decay')}, "
                      f"v* {g('optim.embedding_weight_decay')}; gradient norm clipped at {g('optim.max_grad_norm')}"),
        ("batch size", f"{batch} per process × {accum} accumulation × {world} process{'' if world == 1 else 'es'}{effective}"),
        ("resolution", f"{res}×{res} px crops" if isinstance(res, int) else str(res)),
        ("prompt mixing", f"phase 2: learned prompt {template} with probability {p} (tag: {g('data.tag_choice')}), the sample's caption otherwise"),
        ("v* initialised from", _code(g("model.init_word"))),
        ("mixed precision", _code(g("optim.mixed_precision"))),
        ("seed", str(g("seed"))),
    ]


def snippet(meta: dict[str, Any]) -> str:
    """Python that loads the export with stock diffusers and erases one image (settings at its top)."""
    cfg = meta.get("training_config") or {}
    resolution = _get(cfg, "data.resolution", 512)
    guidance = _get(cfg, "validation.guidance_scale", 7.5)
    return diffusers_snippet(meta["base_model"], meta["token"], resolution if isinstance(resolution, int) else 512,
                             guidance if isinstance(guidance, (int, float)) else 7.5, hub_base_model(meta["base_model"]) is not None)


def card_text(meta: dict[str, Any], *, has_grid: bool, grid_step: int | None = None) -> str:
    """The whole ``README.md``: YAML metadata and Markdown body."""
    from huggingface_hub import ModelCardData

    token, base = meta["token"], meta["base_model"]
    hub_base = hub_base_model(base)
    license_ = base_model_license(base)
    data = ModelCardData(
        base_model=hub_base,
        library_name="diffusers",
        license=license_ or "other",
        tags=list(TAGS),
        pipeline_tag=PIPELINE_TAG,
        instance_prompt=learned_prompt(token, None),
    )
    cfg = meta.get("training_config") or {}
    files = meta.get("files") or {}
    url = project_url()
    project = f"[magiceraser]({url})" if url else "`magiceraser`"

    if hub_base:
        base_line = f"[{base}](https://huggingface.co/{base})"
    else:
        base_line = (f"the local folder {_code(base)} (not a Hugging Face Hub id, so the metadata names no "
                     "`base_model`; set `BASE_MODEL` below to that folder or to the Hub id it is a copy of)")
    if license_:
        license_line = f"The weights carry the base model's license, `{license_}`."
    else:
        license_line = (f"License: unknown. The base model ({_code(base)}) is not one whose license this card knows, "
                        "so the metadata says `other`: these weights are a derivative of it and carry its license; "
                        "check it and set `license` above before publishing.")

    urls = _get(cfg, "data.urls")
    urls = ", ".join(_code(u) for u in urls) if isinstance(urls, list) else urls
    mode = _get(cfg, "data.mode")
    data_kind = {
        "olrd": "OLRD removal samples (an object shifted onto background stuff; input with the object, target without)",
        "random_mask": "the original photos with random masks (classic inpainting training, the paper's ablation row i)",
    }.get(mode, f"`data.mode` {mode}")
    latent_cache = _get(cfg, "data.latent_cache", "")

    lines = [
        f"# MagicEraser object eraser for {base if hub_base else 'Stable Diffusion 1.5 Inpainting'}",
        "",
        f"LoRA adapters and a textual-inversion token {_code(token)} for {base_line}, trained by {project} "
        f"{__version__} (`magiceraser train`) to erase objects: the masked region becomes the background around it.",
        "",
        license_line,
        "",
        "## Use it with diffusers",
        "",
        f"Stock diffusers only. The learned prompt is {_code(LEARNED_TEMPLATE.format(token=token, tag='{background}'))}; "
        "set the paths at the top:",
        "",
        "```python",
        snippet(meta).rstrip("\n"),
        "```",
        "",
        "This runs the learned prompt and the LoRA on the whole image. `magiceraser erase --image photo.jpg "
        f"--mask mask.png --out erased.png trained_dir=THIS_FOLDER base_model={base}` runs the full method "
        "(content initialisation, the background tag from panoptic segmentation, attention refocus, "
        "crops around each masked region at the model's resolution).",
        "",
        "## Training data",
        "",
        f"- Data: {data_kind}.",
        f"- `data.urls`: {urls}" + (f" (through the latent cache {_code(latent_cache)})" if latent_cache and latent_cache != NOT_RECORDED else ""),
        *lineage_lines(meta),
        "",
        "## Training settings",
        "",
        f"From `{META_NAME}` (`training_config` holds every setting).",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in settings_rows(meta)),
        "",
        "## Validation",
        "",
    ]
    if has_grid:
        v = cfg.get("validation") or {}
        when = f" at step {grid_step}" if grid_step is not None else ""
        lines += [
            f"Held-out samples{when}, erased with the learned prompt ({v.get('num_inference_steps', '?')} steps, "
            f"guidance {v.get('guidance_scale', '?')}); rows: input, mask, result, target.",
            "",
            f"![validation grid]({GRID_NAME})",
        ]
    else:
        lines.append("No validation grid was recorded with this export.")
    lines += [
        "",
        "## Files",
        "",
        "| file | sha256 |",
        "| --- | --- |",
        *(f"| `{name}` | `{digest}` |" for name, digest in files.items()),
        f"| `{META_NAME}` | the token, base model, LoRA rank/alpha, steps, world size, every training setting |",
        "",
        "## Method",
        "",
        f"MagicEraser ({PAPER}, [arXiv:2410.10207]({PAPER_URL})) erases objects with Stable Diffusion 1.5 "
        "Inpainting. Training data (OLRD) moves segmented objects onto background stuff, so the model learns to "
        "paint background rather than restore what was there; prompt tuning learns a placeholder token R* "
        "(textual inversion) together with LoRA adapters on the UNet's attention, so the prompt "
        "\"A photo of R* {background}\" asks for background; at inference the hole is first filled "
        "(content initialisation) and the attention is refocused on the background's semantics.",
        "",
        f"Trained with {project} {__version__}.",
        "",
    ]
    return "---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines)
